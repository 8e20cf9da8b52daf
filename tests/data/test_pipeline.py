"""Pipeline: batch format and content, bucketing, sampler proportions,
resumable state, multi-host slices of one global batch, start-up validation."""

import collections
import json

import numpy as np
import pytest

from postembed_jax.data import pipeline

PAIRS = 'interest,hashtag,storyline,search,translation'


def _cfg(base, **changes):
  cfg = base.copy_and_resolve_references()
  for k, v in changes.items():
    cfg[k] = v
  return cfg


def _same(a, b):
  return a.keys() == b.keys() and all(
      a[k] == b[k] if k == 'task' else np.array_equal(a[k], b[k]) for k in a)


def _rows(batch, side):
  ids, mask = batch[f'{side}_ids'], batch[f'{side}_mask']
  return [tuple(r[m.astype(bool)]) for r, m in zip(ids, mask)]


def test_batches_hold_true_pairs_and_labels(data_config, tokenizer):
  cfg = _cfg(data_config, tasks=PAIRS + ',section,debtags')
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
  enc = lambda t: tuple(tokenizer(t, truncation=True, max_length=cfg.max_length)['input_ids'])
  truth, names = {}, {}
  for name in it.task_names:
    ev = pipeline.make_eval_examples(name, 'train', cfg, seed=0)
    names[name] = ev.label_names
    truth[name] = collections.defaultdict(list)  # Texts can repeat with other labels.
    for e in ev.examples:
      if ev.kind == 'pair':
        truth[name][(enc(e['left']), enc(e['right']))].append(e['label'])
      else:
        truth[name][enc(e['text'])].append(e.get('label', e.get('labels')))
  buckets = set(pipeline.bucket_lengths(cfg))
  seen = collections.Counter()
  for _ in range(60):
    b = next(it)
    seen[b['task']] += 1
    if 'left_ids' in b:
      assert b['left_ids'].dtype == np.int32 and b['label'].dtype == np.float32
      assert b['left_ids'].shape[0] == cfg.batch_size and b['right_ids'].shape[1] in buckets
      assert b['left_ids'].shape[1] in buckets
      for l, r, y in zip(_rows(b, 'left'), _rows(b, 'right'), b['label']):
        assert y in truth[b['task']][(l, r)]
    else:
      assert b['ids'].shape[0] == cfg.batch_size and b['ids'].shape[1] in buckets
      rows = [tuple(r[m.astype(bool)]) for r, m in zip(b['ids'], b['mask'])]
      if b['task'] == 'section':
        assert all(y in truth['section'][r] for r, y in zip(rows, b['label'].tolist()))
      else:
        assert b['labels'].shape == (cfg.batch_size, len(names['debtags']))
        for r, y in zip(rows, b['labels']):
          assert np.flatnonzero(y).tolist() in truth['debtags'][r]
  assert len(seen) == len(it.task_names)


def test_length_bucketing_keeps_padding_small(data_config, tokenizer):
  cfg = _cfg(data_config, tasks='search,translation', batch_size=16, neg_ratio=0.0)

  def fill(**changes):
    it = pipeline.make_train_iterator(_cfg(cfg, **changes), tokenizer, seed=0)
    return np.mean([next(it)['right_mask'].mean() for _ in range(200)])

  tokens, estimate, unsorted = fill(), fill(length_key='bytes'), fill(shuffle_window=1)
  assert tokens > 0.75 and estimate > 0.7 and tokens > estimate, (tokens, estimate)
  assert estimate > unsorted + 0.1, (estimate, unsorted)


@pytest.mark.parametrize('sampling,extra', [
    ('uniform', {}), ('proportional', {'cap_k': 800}), ('temperature', {'temperature': 3.0}),
    ('weights', {'weights': 'interest=1,hashtag=2,storyline=0,search=3,translation=4'}),
])
def test_sampler_reaches_target_proportions(data_config, tokenizer, sampling, extra):
  cfg = _cfg(data_config, tasks=PAIRS, sampling=sampling, **extra)
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=1)
  n = np.array([it.num_examples[t] for t in it.task_names], dtype=float)
  expected = {
      'uniform': np.ones_like(n),
      'proportional': np.minimum(n, 800),
      'temperature': n ** (1 / 3.0),
      'weights': np.array([1, 2, 0, 3, 4], dtype=float),
  }[sampling]
  expected = expected / expected.sum()
  np.testing.assert_allclose([it.probabilities[t] for t in it.task_names], expected)
  steps = 4000
  counts = collections.Counter(next(it)['task'] for _ in range(steps))
  for t, p in zip(it.task_names, expected):
    se = np.sqrt(p * (1 - p) / steps)
    assert abs(counts[t] / steps - p) <= 4 * se + 1e-12, (t, counts[t] / steps, p)


def test_mixed_batches_reach_target_proportions(data_config, tokenizer):
  cfg = _cfg(data_config, tasks='interest,search,translation', mixed=True, sampling='uniform')
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
  ids = np.concatenate([next(it)['task_id'] for _ in range(500)])
  assert len(ids) == 500 * cfg.batch_size
  frac = np.bincount(ids, minlength=3) / len(ids)
  assert np.all(np.abs(frac - 1 / 3) <= 4 * np.sqrt(2 / 9 / len(ids))), frac
  b = next(it)
  assert b['task'] == 'mixed' and b['task_id'].dtype == np.int32
  assert len(set(b['task_id'].tolist())) > 1 or len(set(ids[:64].tolist())) > 1


@pytest.mark.parametrize('mixed', [False, True])
def test_saved_state_resumes_identically(data_config, tokenizer, mixed):
  cfg = _cfg(data_config, tasks='interest,search,section' if not mixed else 'interest,search',
             mixed=mixed, shuffle_window=4)
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=5)
  for _ in range(11):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(25)]
  fresh = pipeline.make_train_iterator(cfg, tokenizer, seed=5)
  fresh.set_state(state)
  assert all(_same(a, b) for a, b in zip(expected, [next(fresh) for _ in range(25)]))
  other = pipeline.make_train_iterator(cfg, tokenizer, seed=6)
  other.set_state(state)
  assert not all(_same(a, b) for a, b in zip(expected, [next(other) for _ in range(25)]))


def _assemble(parts):
  """The trainer's view of the hosts' batches: every 2-D ids/mask array padded
  (with 0) to the longest host, then rows concatenated in host order."""
  out = {'task': parts[0]['task']}
  assert all(p['task'] == out['task'] and p.keys() == parts[0].keys() for p in parts)
  for k in parts[0]:
    if k == 'task':
      continue
    arrays = [p[k] for p in parts]
    if arrays[0].ndim == 2 and k.endswith(('ids', 'mask')):
      width = max(a.shape[1] for a in arrays)
      arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
    out[k] = np.concatenate(arrays)
  return out


def _check_host_batch(batch, buckets, rows):
  """A host's batch has its own rows, padded to the bucket of its longest one."""
  for k in batch:
    if k.endswith('mask'):
      longest = int(batch[k].sum(axis=1).max())
      assert batch[k].shape == (rows, min(b for b in buckets if b >= longest)), k
    if k != 'task':
      assert len(batch[k]) == rows, k


@pytest.mark.parametrize('tasks,mixed,length_key', [
    ('interest,search,section,debtags', False, 'tokens'),
    ('interest,search,section,debtags', False, 'bytes'),
    ('interest,search,translation', True, 'tokens'),
    ('interest,search,translation', True, 'bytes'),
], ids=['single-tokens', 'single-bytes', 'mixed-tokens', 'mixed-bytes'])
def test_hosts_yield_their_slice_of_the_one_process_batch(data_config, tokenizer, tasks, mixed,
                                                          length_key):
  cfg = _cfg(data_config, tasks=tasks, mixed=mixed, length_key=length_key, shuffle_window=4,
             bucket_lengths=(16, 32, 48, 64, 96, 128))
  buckets = pipeline.bucket_lengths(cfg)
  single = pipeline.make_train_iterator(cfg, tokenizer, seed=3)
  expected = [next(single) for _ in range(30)]
  state = json.loads(json.dumps(single.get_state()))
  expected += [next(single) for _ in range(10)]
  assert len({b['task'] for b in expected}) == (1 if mixed else 4)
  # Row widths differ between hosts, so the test really covers per-host padding.
  for count in (1, 2, 4):
    hosts = [pipeline.make_train_iterator(cfg, tokenizer, seed=3, process_index=i,
                                          process_count=count) for i in range(count)]
    widths = set()
    for step, want in enumerate(expected[:30]):
      parts = [next(h) for h in hosts]
      for part in parts:
        _check_host_batch(part, buckets, cfg.batch_size // count)
      widths.add(len({p['left_ids'].shape[1] for p in parts if 'left_ids' in p}))
      assert _same(_assemble(parts), want), (count, step)
    if count > 1:
      assert max(widths) > 1, 'every host padded to the same width: weak test'
    # The state is host-independent: resume every host from a saved state.
    assert all(json.loads(json.dumps(h.get_state())) == state for h in hosts)
    resumed = [pipeline.make_train_iterator(cfg, tokenizer, seed=3, process_index=i,
                                            process_count=count) for i in range(count)]
    for h in resumed:
      h.set_state(state)
    for step, want in enumerate(expected[30:], start=30):
      assert _same(_assemble([next(h) for h in resumed]), want), (count, step)
  with pytest.raises(ValueError, match='not divisible'):
    pipeline.make_train_iterator(_cfg(cfg, batch_size=9), tokenizer, seed=0, process_count=2)


def test_bytes_key_tokenises_only_the_hosts_rows(data_config, tokenizer):
  cfg = _cfg(data_config, tasks='interest,search', length_key='bytes')
  hosts = [pipeline.make_train_iterator(cfg, tokenizer, seed=0, process_index=i, process_count=2)
           for i in range(2)]
  vocab = hosts[0]._it._ds.batches['search'].vocab  # pylint: disable=protected-access
  assert vocab.num_tokenised == 0  # nothing at start-up
  seen = [set(), set()]
  for _ in range(20):
    for h, it in enumerate(hosts):
      b = next(it)
      for side in ('left', 'right'):
        seen[h] |= set(_rows(b, side))
  for h, it in enumerate(hosts):
    vocab = it._it._ds.batches['search'].vocab  # pylint: disable=protected-access
    tokenised = {tuple(vocab._ids[t]) for t in np.flatnonzero(vocab.lengths >= 0)}  # pylint: disable=protected-access
    assert tokenised == seen[h]
  assert seen[0] != seen[1]
  cfg = _cfg(cfg, length_key='tokens')
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=0, process_index=0, process_count=2)
  next(it)  # 'tokens' needs the lengths of the whole window (shuffle_window global batches)
  vocab = it._it._ds.batches['search'].vocab  # pylint: disable=protected-access
  assert vocab.num_tokenised > cfg.batch_size * 2


def test_user_files_through_the_pipeline(data_config, tokenizer, tmp_path):
  path = tmp_path / 'pairs.jsonl'
  path.write_text('\n'.join(json.dumps({'left': f'question number {i}', 'right': f'answer {i}',
                                        'label': 1}) for i in range(100)))
  cfg = _cfg(data_config, source='files', files=f'qa={path}', tasks='qa')
  b = next(pipeline.make_train_iterator(cfg, tokenizer, seed=0))
  assert b['task'] == 'qa' and b['label'].tolist() == [1.0] * cfg.batch_size
  with pytest.raises(ValueError, match=r"Unknown task 'interest'; valid tasks: \['qa'\]"):
    pipeline.make_train_iterator(_cfg(cfg, tasks='qa,interest'), tokenizer, seed=0)


def test_eval_examples_are_fixed(data_config):
  a = pipeline.make_eval_examples('relation', 'test', data_config)
  assert a.kind == 'pair' and a.examples
  assert a.examples == pipeline.make_eval_examples('relation', 'test', data_config).examples
  sec = pipeline.make_eval_examples('section', 'validation', data_config)
  assert sec.kind == 'classification' and sec.label_names and not sec.multi_label
  assert all(0 <= e['label'] < len(sec.label_names) for e in sec.examples)


@pytest.mark.parametrize('changes,msg', [
    ({'tasks': 'interest,bogus'}, r"Unknown task 'bogus'; valid tasks: \['debtags', "),
    ({'tasks': 'relation'}, r"held out for zero-shot evaluation; trainable tasks: \['debtags'"),
    ({'languages': 'de,xx'}, r"Unknown language\(s\) \['xx'\] in languages; valid languages"),
    ({'languages': 'de,ja'}, r"Languages \['ja'\] are both trained on and held out"),
    ({'sampling': 'greedy'}, r"Unknown sampling 'greedy'; valid: \['uniform'"),
    ({'sampling': 'weights', 'weights': 'interest=1'}, r"weights must name exactly the tasks"),
    ({'tasks': 'interest,section', 'mixed': True}, 'mixed=True mixes pair tasks only'),
    ({'source': 'web'}, r"Unknown source 'web'"),
])
def test_bad_config_fails_at_start_with_valid_names(data_config, tokenizer, changes, msg):
  with pytest.raises(ValueError, match=msg):
    pipeline.make_train_iterator(_cfg(data_config, **changes), tokenizer, seed=0)


def test_unknown_split_for_eval(data_config):
  with pytest.raises(ValueError, match=r"valid splits: \['train', 'validation', 'test'\]"):
    pipeline.make_eval_examples('search', 'dev', data_config)


def test_config_specialises_tasks_and_caps_examples(data_config):
  cfg = _cfg(data_config, heldout_facets='role', max_examples_per_task=50)
  ev = pipeline.make_eval_examples('debtags', 'train', cfg)
  assert ev.multi_label and not [n for n in ev.label_names if n.startswith('role::')]
  assert len(ev.examples) == 50
  zs = pipeline.make_eval_examples('zs_hashtag', 'train', _cfg(cfg, neg_ratio=0.0))
  assert zs.examples and all(e['right'].startswith('role: ') for e in zs.examples)
