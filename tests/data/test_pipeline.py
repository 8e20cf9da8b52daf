"""Pipeline: batch format and content, bucketing, sampler proportions,
resumable state, multi-host sharding, start-up validation."""

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
  it = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
  fill = np.mean([next(it)['right_mask'].mean() for _ in range(200)])
  it = pipeline.make_train_iterator(_cfg(cfg, shuffle_window=1), tokenizer, seed=0)
  fill_unsorted = np.mean([next(it)['right_mask'].mean() for _ in range(200)])
  assert fill > 0.7 and fill > fill_unsorted + 0.1, (fill, fill_unsorted)


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


def test_hosts_read_disjoint_shards_in_step(data_config, tokenizer):
  cfg = _cfg(data_config, tasks='interest,search')
  hosts = [pipeline.make_train_iterator(cfg, tokenizer, seed=0, process_index=i, process_count=2)
           for i in range(2)]
  single = pipeline.make_train_iterator(cfg, tokenizer, seed=0)
  for _ in range(30):
    b0, b1, b = next(hosts[0]), next(hosts[1]), next(single)
    assert b0['task'] == b1['task'] == b['task']
    assert b0['label'].shape == (cfg.batch_size // 2,)
  for name in ('interest', 'search'):
    shards = [h._it._ds.batches[name].data for h in hosts]  # pylint: disable=protected-access
    assert len(shards[0]) + len(shards[1]) == hosts[0].num_examples[name]
  with pytest.raises(ValueError, match='not divisible'):
    pipeline.make_train_iterator(_cfg(cfg, batch_size=9), tokenizer, seed=0, process_count=2)


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
