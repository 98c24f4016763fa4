"""Dynamic masking: statistics, label consistency, whole words, determinism, edge cases."""

import numpy as np
import pytest

from data_pipeline.masking import KINDS, MaskingConfig, mask_batch, masking_stats, row_keys

CLS, PAD, SEP, UNK, MASK = 0, 1, 2, 3, 4
N_SPECIAL = 5


def make_batch(seed, rows, seq, vocab=60, min_len=None):
    """Rows like the loader's: [CLS] doc... [SEP] doc... [SEP] PAD...; ~1.4 tokens per word."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(N_SPECIAL, vocab, size=(rows, seq))
    word_start = rng.random((rows, seq)) < 0.7
    lengths = rng.integers(min_len or max(1, seq // 2), seq + 1, size=rows)
    ids[np.arange(seq) >= lengths[:, None]] = PAD
    ids[:, 0] = CLS
    ids[np.arange(rows), lengths - 1] = SEP
    docs = rng.random((rows, seq)) < 0.01  # packed document separators
    ids[docs & (ids != PAD)] = SEP
    word_start[np.roll(ids == SEP, 1, axis=1)] = True
    maskable = ids >= N_SPECIAL
    return ids, word_start, maskable


def run(ids, ws, mk, cfg, seed=0, epoch=0, sample_ids=None, vocab=60):
    sample_ids = np.arange(len(ids)) if sample_ids is None else sample_ids
    keys = row_keys(seed, epoch, sample_ids)
    return mask_batch(ids, ws, mk, keys, cfg, MASK, np.arange(N_SPECIAL, vocab))


@pytest.fixture(scope="module")
def big():
    """>= 1 M maskable tokens over a 60-token vocabulary (where a random replacement that
    could equal the original would visibly inflate "unchanged")."""
    ids, ws, mk = make_batch(1, 2600, 512, min_len=400)
    assert mk.sum() >= 1_000_000
    return ids, ws, mk


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [0.15, 0.3])
def test_rate_and_split_on_a_million_tokens(big, kind, p):
    ids, ws, mk = big
    masked, labels = run(ids, ws, mk, MaskingConfig(kind=kind, mask_prob=p))
    st = masking_stats(ids, masked, labels, mk, MASK, word_start=ws)
    # mlm: exact per-row counts. wwm/span: whole words, the crossing word kept with the right
    # probability, so unbiased too (measured <= 0.03 % off for every kind and seed tried).
    assert abs(st["rate"] / p - 1) < 0.003
    assert abs(st["mask_frac"] / 0.8 - 1) < 0.01
    assert abs(st["random_frac"] / 0.1 - 1) < 0.01
    assert abs(st["unchanged_frac"] / 0.1 - 1) < 0.01
    assert st["bad_selected"] == 0 and st["bad_labels"] == 0
    if kind != "mlm":
        assert st["partial_words"] == 0
    sel = labels != -100
    per_row = sel.sum(axis=1)

    def floor_or_ceil(count, expected):
        return np.all((count == np.floor(expected)) | (count == np.ceil(expected)))

    if kind == "mlm":  # exact per-row count: floor or ceil of p * maskable
        assert floor_or_ceil(per_row, p * mk.sum(axis=1))
    # Per row, every class of the split is within one token of its share (shared rounding).
    is_mask = sel & (masked == MASK)
    is_rand = sel & (masked != MASK) & (masked != ids)
    assert floor_or_ceil(is_mask.sum(axis=1), 0.8 * per_row)
    assert floor_or_ceil(is_rand.sum(axis=1), 0.1 * per_row)
    assert floor_or_ceil((sel & (masked == ids)).sum(axis=1), 0.1 * per_row)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_and_replacements_are_consistent(kind):
    ids, ws, mk = make_batch(2, 64, 128)
    masked, labels = run(ids, ws, mk, MaskingConfig(kind=kind, mask_prob=0.3))
    sel = labels != -100
    assert masked.dtype == np.int64 and labels.dtype == np.int64
    assert not np.any(sel & ~mk), "special or padding token selected"
    np.testing.assert_array_equal(labels[sel], ids[sel])
    np.testing.assert_array_equal(masked[~sel], ids[~sel])
    m, o = masked[sel], ids[sel]
    is_rand = (m != MASK) & (m != o)
    assert np.all((m[is_rand] >= N_SPECIAL) & (m[is_rand] < 60))
    assert sel.any() and is_rand.any() and (m == MASK).any() and (m == o).any()


def test_random_replacement_is_uniform_over_other_ids():
    vocab = N_SPECIAL + 10
    ids = np.full((400, 256), 7)  # every token is id 7
    mk = np.ones_like(ids, dtype=bool)
    cfg = MaskingConfig(mask_prob=0.5, mask_token_prob=0.0, random_token_prob=1.0)
    masked, labels = run(ids, mk, mk, cfg, vocab=vocab)
    repl = masked[labels != -100]
    assert not np.any(repl == 7) and np.all((repl >= N_SPECIAL) & (repl < vocab))
    counts = np.bincount(repl, minlength=vocab)[N_SPECIAL:]
    counts = np.delete(counts, 7 - N_SPECIAL)
    expected = repl.size / counts.size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # 8 dof, p = 0.0005


def test_unsorted_random_ids_are_a_set():
    ids, ws, mk = make_batch(3, 32, 64)
    keys = row_keys(0, 0, np.arange(32))
    cfg = MaskingConfig(mask_prob=0.5)
    sorted_ids = np.arange(N_SPECIAL, 60)
    shuffled = np.random.default_rng(0).permutation(np.concatenate([sorted_ids, sorted_ids]))
    a = mask_batch(ids, ws, mk, keys, cfg, MASK, sorted_ids)
    b = mask_batch(ids, ws, mk, keys, cfg, MASK, shuffled)
    np.testing.assert_array_equal(a[0], b[0])


def test_whole_word_masking_selects_whole_words():
    ids, ws, mk = make_batch(4, 128, 256)
    masked, labels = run(ids, ws, mk, MaskingConfig(kind="wwm", mask_prob=0.2))
    sel = labels != -100
    # Walk every word explicitly: its tokens are all selected or none.
    words = 0
    for r in range(len(ids)):
        word = []
        for t in range(ids.shape[1] + 1):
            if t == ids.shape[1] or not mk[r, t] or ws[r, t] or (t > 0 and not mk[r, t - 1]):
                if word:
                    assert len(set(sel[r, word])) == 1, (r, word)
                    words += 1
                word = [t] if t < ids.shape[1] and mk[r, t] else []
            else:
                word.append(t)
    assert words == masking_stats(ids, masked, labels, mk, MASK, word_start=ws)["words"]


@pytest.mark.parametrize("kind", KINDS)
def test_row_mask_depends_only_on_key_and_contents(kind):
    ids, ws, mk = make_batch(5, 48, 96)
    sample_ids = np.arange(1000, 1048)
    cfg = MaskingConfig(kind=kind, mask_prob=0.25)
    full = run(ids, ws, mk, cfg, sample_ids=sample_ids)
    perm = np.random.default_rng(1).permutation(48)
    shuffled = run(ids[perm], ws[perm], mk[perm], cfg, sample_ids=sample_ids[perm])
    for out_full, out_shuf in zip(full, shuffled, strict=True):
        np.testing.assert_array_equal(out_full[perm], out_shuf)
    for r in (0, 17, 47):  # alone, in a batch of other rows, and with extra padding
        alone = run(
            ids[r : r + 1], ws[r : r + 1], mk[r : r + 1], cfg, sample_ids=sample_ids[r : r + 1]
        )
        pad = ((0, 0), (0, 40))
        padded = run(
            np.pad(ids[r : r + 1], pad, constant_values=PAD),
            np.pad(ws[r : r + 1], pad),
            np.pad(mk[r : r + 1], pad),
            cfg,
            sample_ids=sample_ids[r : r + 1],
        )
        for i in range(2):
            np.testing.assert_array_equal(alone[i][0], full[i][r])
            np.testing.assert_array_equal(padded[i][0, :96], full[i][r])


@pytest.mark.parametrize("kind", KINDS)
def test_epochs_and_seeds_change_the_mask(kind):
    ids, ws, mk = make_batch(6, 64, 256)
    cfg = MaskingConfig(kind=kind)
    base = run(ids, ws, mk, cfg)[1] != -100
    again = run(ids, ws, mk, cfg)[1] != -100
    np.testing.assert_array_equal(base, again)
    for other in (run(ids, ws, mk, cfg, epoch=1), run(ids, ws, mk, cfg, seed=1)):
        sel = other[1] != -100
        overlap = (sel & base).sum() / base.sum()
        assert overlap < 0.3  # independent masks overlap on ~mask_prob of positions
        assert np.all(np.any(sel != base, axis=1)[mk.sum(axis=1) > 50])


def test_selected_positions_are_uniform():
    ids = np.full((4000, 64), 9)
    mk = np.ones_like(ids, dtype=bool)
    masked, labels = run(ids, mk, mk, MaskingConfig(mask_prob=0.15))
    per_pos = (labels != -100).sum(axis=0)
    expected = per_pos.sum() / 64
    chi2 = ((per_pos - expected) ** 2 / expected).sum()
    assert chi2 < 110.0  # 63 dof, p ~ 0.0002


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_are_not_modified(kind):
    ids, ws, mk = make_batch(7, 16, 64)
    keys = row_keys(0, 0, np.arange(16))
    rnd = np.arange(N_SPECIAL, 60)
    arrays = (ids, ws, mk, keys, rnd)
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False  # also proves nothing writes in place
    mask_batch(ids, ws, mk, keys, MaskingConfig(kind=kind, mask_prob=0.5), MASK, rnd)
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_edge_cases(kind):
    ids, ws, mk = make_batch(8, 8, 32)
    mk[2] = False  # an all-special row
    ids[2] = PAD
    for p in (0.0, 1.0):
        masked, labels = run(ids, ws, mk, MaskingConfig(kind=kind, mask_prob=p))
        np.testing.assert_array_equal(labels != -100, mk if p == 1.0 else np.zeros_like(mk))
        assert np.all(labels[2] == -100) and np.all(masked[2] == PAD)
    one = np.array([[11]])
    for flag in (True, False):
        m, lab = run(one, one > 0, np.array([[flag]]), MaskingConfig(kind=kind, mask_prob=1.0))
        assert lab[0, 0] == (11 if flag else -100)
        assert m[0, 0] == 11 or (flag and (m[0, 0] == MASK or N_SPECIAL <= m[0, 0] < 60))
    empty = np.zeros((0, 16), dtype=np.int64)
    m, lab = run(empty, empty > 0, empty > 0, MaskingConfig(kind=kind))
    assert m.shape == lab.shape == (0, 16)
    all_mask = MaskingConfig(kind=kind, mask_prob=1.0, mask_token_prob=1.0, random_token_prob=0.0)
    masked, labels = run(ids, ws, mk, all_mask)
    assert np.all(masked[mk] == MASK) and np.all(masked[~mk] == ids[~mk])


def test_bad_inputs_and_config_fail_in_one_line():
    ids, ws, mk = make_batch(9, 4, 16)
    keys = row_keys(0, 0, np.arange(4))
    cfg = MaskingConfig()
    bad_calls = [
        lambda: mask_batch(ids[0], ws, mk, keys, cfg, MASK, np.arange(5, 60)),
        lambda: mask_batch(ids, ws[:, :3], mk, keys, cfg, MASK, np.arange(5, 60)),
        lambda: mask_batch(ids, ws, mk, keys[:2], cfg, MASK, np.arange(5, 60)),
        lambda: mask_batch(ids, ws, mk, keys, cfg, MASK, np.zeros(0, dtype=np.int64)),
        lambda: MaskingConfig(kind="bert"),
        lambda: MaskingConfig(mask_prob=1.5),
        lambda: MaskingConfig(mask_token_prob=0.9, random_token_prob=0.2),
        lambda: MaskingConfig(span_p=0.0),
        lambda: MaskingConfig(span_max=0),
        lambda: MaskingConfig(mask_prob="0.15"),
        lambda: row_keys(-1, 0, np.arange(3)),
        lambda: row_keys(0, 0, np.array([-2])),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError) as err:
            call()
        assert "\n" not in str(err.value) and str(err.value)
    no_random = MaskingConfig(random_token_prob=0.0)  # empty random_ids is fine then
    mask_batch(ids, ws, mk, keys, no_random, MASK, np.zeros(0, dtype=np.int64))


def test_masking_stats_definitions():
    original = np.array([[0, 10, 11, 12, 13, 14, 15, 2, 1]])
    masked = np.array([[0, 4, 11, 30, 4, 14, 15, 2, 1]])
    labels = np.array([[-100, 10, 11, 12, 13, -100, -100, -100, -100]])
    maskable = np.array([[0, 1, 1, 1, 1, 1, 1, 0, 0]], dtype=bool)
    word_start = np.array([[1, 1, 0, 1, 1, 0, 1, 1, 0]], dtype=bool)
    st = masking_stats(original, masked, labels, maskable, MASK, word_start=word_start)
    assert st["tokens"] == 6 and st["selected"] == 4 and st["rate"] == pytest.approx(4 / 6)
    assert st["mask_frac"] == 0.5 and st["random_frac"] == 0.25 and st["unchanged_frac"] == 0.25
    assert st["runs"] == 1 and st["mean_run"] == 4.0
    assert st["words"] == 4 and st["words_selected"] == 3 and st["partial_words"] == 1
    assert st["bad_selected"] == 0 and st["bad_labels"] == 0
    assert masking_stats(original, masked, labels, maskable, MASK)["words"] is None
