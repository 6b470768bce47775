"""Superclasses: confusion matrix -> confusion graph -> exactly E groups, plus files, table and CLI."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymoe import superclasses as sc
from tinymoe.superclasses.__main__ import main as sc_main
from tinymoe.testing import strategies as st_
from tinymoe.testing.confusion import planted_confusion


# The planted-recovery test runs once per E in 2..20; fewer examples per E keep the suite fast while
# still following the active hypothesis profile (HYPOTHESIS_PROFILE=thorough scales it up).
FEWER_EXAMPLES = settings(max_examples=max(5, settings.default.max_examples * 2 // 5))


def partition(assignment):
    """The groups of an assignment as a set of frozensets of class indices: equal partitions compare
    equal whatever the group ids are (written independently of `canonical_labels`)."""
    groups = {}
    for c, g in enumerate(np.asarray(assignment).tolist()):
        groups.setdefault(g, set()).add(c)
    return {frozenset(members) for members in groups.values()}


def assert_valid_assignment(assignment, num_classes, n_groups):
    assert assignment.dtype == np.int64
    assert assignment.shape == (num_classes,)
    assert set(assignment.tolist()) == set(range(n_groups))  # exactly n_groups, none empty
    # canonical: groups are numbered in order of their smallest class
    first_seen = []
    for g in assignment.tolist():
        if g not in first_seen:
            first_seen.append(g)
    assert first_seen == list(range(n_groups))


# --------------------------------------------------------------------------------------------------
# confusion_matrix
# --------------------------------------------------------------------------------------------------


@given(data=st.data())
def test_confusion_matrix_counts_every_pair(data):
    num_classes = data.draw(st.integers(1, 12))
    size = data.draw(st.integers(0, 60))
    labels = data.draw(st_.labels(num_classes, size))
    predictions = data.draw(st_.labels(num_classes, size))
    labels0, predictions0 = labels.copy(), predictions.copy()
    expected = np.zeros((num_classes, num_classes), dtype=np.int64)
    for true, predicted in zip(labels, predictions):
        expected[true, predicted] += 1
    got = sc.confusion_matrix(labels, predictions, num_classes)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got.sum(axis=1), np.bincount(labels, minlength=num_classes))
    np.testing.assert_array_equal(labels, labels0)  # inputs are never mutated
    np.testing.assert_array_equal(predictions, predictions0)


@pytest.mark.parametrize(
    "labels, predictions, num_classes, error, message",
    [
        ([0, 1], [0, 1, 1], 3, ValueError, "same length"),
        ([[0, 1]], [[0, 1]], 3, ValueError, "1-D"),
        ([0.0, 1.0], [0, 1], 3, TypeError, "integer class indices"),
        ([0, 3], [0, 1], 3, ValueError, r"\[0, 3\)"),
        ([0, 1], [-1, 1], 3, ValueError, r"\[0, 3\)"),
        ([0, 1], [0, 1], 0, ValueError, "num_classes must be >= 1"),
        ([0, 1], [0, 1], True, TypeError, "bool"),
        ([0, 1], [0, 1], 2.0, TypeError, "integer"),
    ],
)
def test_confusion_matrix_rejects_bad_input(labels, predictions, num_classes, error, message):
    with pytest.raises(error, match=message):
        sc.confusion_matrix(np.asarray(labels), np.asarray(predictions), num_classes)


# --------------------------------------------------------------------------------------------------
# confusion_graph
# --------------------------------------------------------------------------------------------------


@given(counts=st_.confusion_matrices())
def test_confusion_graph_is_symmetric_rates_without_self_loops(counts):
    counts0 = counts.copy()
    graph = sc.confusion_graph(counts)
    size = counts.shape[0]
    expected = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            if i == j:
                continue
            rate_ij = counts[i, j] / counts[i].sum() if counts[i].sum() else 0.0
            rate_ji = counts[j, i] / counts[j].sum() if counts[j].sum() else 0.0
            expected[i, j] = (rate_ij + rate_ji) / 2
    np.testing.assert_allclose(graph, expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(graph, graph.T)
    assert np.all(np.diag(graph) == 0) and np.all(graph >= 0) and np.all(graph <= 1)
    np.testing.assert_array_equal(counts, counts0)


@given(counts=st_.confusion_matrices(), data=st.data())
def test_confusion_graph_ignores_class_frequency(counts, data):
    # Ten times more held-out images of a class, confused in the same proportions, gives the same graph.
    scale = np.asarray(data.draw(st.lists(st.integers(1, 10), min_size=len(counts), max_size=len(counts))))
    np.testing.assert_allclose(sc.confusion_graph(counts * scale[:, None]), sc.confusion_graph(counts), rtol=1e-12)


@pytest.mark.parametrize("function", [sc.confusion_graph, lambda c: sc.cluster(c, 1)])
@pytest.mark.parametrize(
    "confusion, error, message",
    [
        (np.ones((3, 4)), ValueError, r"square .* got shape \(3, 4\)"),
        (np.ones(3), ValueError, "square"),
        (np.ones((2, 2, 2)), ValueError, "square"),
        (np.ones((0, 0)), ValueError, "empty"),
        (np.array([[1, -2], [0, 1]]), ValueError, "negative counts .* row 0, column 1"),
        (np.array([[1, np.nan], [0, 1]]), ValueError, "NaN or inf .* row 0, column 1"),
        (np.array([[1, np.inf], [0, 1]]), ValueError, "NaN or inf"),
        (np.array([[True, False], [False, True]]), TypeError, "numeric"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "numeric"),
    ],
)
def test_bad_confusion_matrices_are_refused(function, confusion, error, message):
    with pytest.raises(error, match=message):
        function(confusion)


def test_isolated_classes_are_those_without_any_edge():
    counts = np.diag([5, 5, 5, 5, 5])
    counts[1, 3] = 2  # 1 mistaken for 3: both get an edge
    counts[4, 4] = 0  # no images of class 4, and nothing predicted as 4
    np.testing.assert_array_equal(sc.isolated_classes(counts), [0, 2, 4])
    counts[0, 4] = 1  # class 0 mistaken for 4: 4 gets an edge through its column
    np.testing.assert_array_equal(sc.isolated_classes(counts), [2])


# --------------------------------------------------------------------------------------------------
# Spectral embedding and k-means
# --------------------------------------------------------------------------------------------------


@given(planted=st_.planted_confusions(n_groups=st.integers(1, 6), max_noise=0.0))
def test_spectral_embedding_of_separate_blocks_puts_each_block_on_one_orthogonal_direction(planted):
    # Without noise the planted groups are the graph's connected components: eigenvalue 0 of the
    # normalised Laplacian has one eigenvector per component, so rows of one block coincide and rows of
    # different blocks are orthogonal unit vectors.
    counts, truth = planted
    n_groups = int(truth.max()) + 1
    embedding = sc.spectral_embedding(sc.confusion_graph(counts), n_groups)
    assert embedding.shape == (len(truth), n_groups)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-10)
    gram = embedding @ embedding.T
    same_group = truth[:, None] == truth[None, :]
    np.testing.assert_allclose(gram[same_group], 1.0, atol=1e-8)
    np.testing.assert_allclose(gram[~same_group], 0.0, atol=1e-8)


def test_spectral_embedding_needs_an_edge_at_every_node():
    with pytest.raises(ValueError, match=r"nodes \[1\] have none"):
        sc.spectral_embedding(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), 2)


@given(data=st.data())
def test_kmeans_fills_every_cluster_even_with_duplicate_points(data):
    # Fewer distinct points than clusters: k-means alone would leave clusters empty; the repair
    # step must still give each of the k clusters a point.
    distinct = data.draw(st.integers(1, 4))
    points = np.repeat(np.eye(4)[:distinct], data.draw(st.integers(2, 4)), axis=0)
    k = data.draw(st.integers(1, len(points)))
    labels, inertia = sc.kmeans(points, k, np.random.default_rng(data.draw(st.integers(0, 100))))
    assert sorted(set(labels.tolist())) == list(range(k))
    assert inertia >= 0


def test_kmeans_separates_well_separated_blobs_and_reports_their_inertia():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), [5, 9, 3])
    points = centres[truth] + rng.normal(0, 0.1, (len(truth), 2))
    labels, inertia = sc.kmeans(points, 3, np.random.default_rng(1))
    assert partition(labels) == partition(truth)
    expected = sum(((points[truth == g] - points[truth == g].mean(0)) ** 2).sum() for g in range(3))
    assert inertia == pytest.approx(expected, rel=1e-12)


def test_canonical_labels_number_groups_by_smallest_member():
    np.testing.assert_array_equal(sc.canonical_labels([7, 3, 7, 9, 3]), [0, 1, 0, 2, 1])


# --------------------------------------------------------------------------------------------------
# cluster: the properties the rest of tinymoe relies on
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_groups", range(2, 21))
@FEWER_EXAMPLES
@given(planted=st.data())
def test_cluster_recovers_planted_superclasses_exactly(n_groups, planted):
    # Unequal group sizes (2..12 classes), scattered class indices, uneven class frequencies and
    # accuracies, and up to 20% of the mistakes strayed to other groups at random.
    counts, truth = planted.draw(st_.planted_confusions(n_groups=n_groups))
    seed = planted.draw(st.integers(0, 2**31 - 1))
    got = sc.cluster(counts, n_groups, seed=seed)
    assert partition(got) == partition(truth)
    assert_valid_assignment(got, len(truth), n_groups)


def test_cluster_recovers_strongly_unequal_groups():
    counts, truth = planted_confusion([2, 40, 3, 25, 2], seed=3, noise=0.1)
    assert partition(sc.cluster(counts, 5)) == partition(truth)


@given(counts=st_.confusion_matrices(), data=st.data())
def test_cluster_always_returns_exactly_n_groups_non_empty_groups(counts, data):
    n_groups = data.draw(st.integers(1, len(counts)))
    seed = data.draw(st.integers(0, 1000))
    got = sc.cluster(counts, n_groups, seed=seed)
    assert_valid_assignment(got, len(counts), n_groups)
    np.testing.assert_array_equal(sc.cluster(counts, n_groups, seed=seed), got)  # deterministic for a seed


@given(
    planted=st_.planted_confusions(n_groups=st.integers(2, 8)),
    seeds=st.lists(st.integers(0, 10**6), min_size=2, max_size=2),
)
def test_an_unambiguous_grouping_does_not_depend_on_the_seed(planted, seeds):
    counts, truth = planted
    n_groups = int(truth.max()) + 1
    a, b = (sc.cluster(counts, n_groups, seed=s) for s in seeds)
    np.testing.assert_array_equal(a, b)  # canonical ids: the same partition gives the same array


@given(planted=st_.planted_confusions(n_groups=st.integers(2, 10)), data=st.data())
def test_permuting_the_classes_permutes_the_assignment(planted, data):
    counts, _ = planted
    n_groups = len(set(_.tolist()))
    order = np.asarray(data.draw(st.permutations(range(len(counts)))))
    seed = data.draw(st.integers(0, 1000))
    # Class order[i] of the original is class i of the permuted matrix.
    permuted = sc.cluster(counts[np.ix_(order, order)], n_groups, seed=seed)
    original = sc.cluster(counts, n_groups, seed=seed)
    assert partition(permuted) == partition(original[order])


@pytest.mark.parametrize("num_classes, n_groups", [(7, 3), (10, 10), (5, 1), (12, 5)])
def test_a_model_without_mistakes_deals_classes_round_robin(num_classes, n_groups):
    perfect = np.diag(np.arange(1, num_classes + 1) * 10)
    expected = np.arange(num_classes) % n_groups
    np.testing.assert_array_equal(sc.cluster(perfect, n_groups), expected)
    np.testing.assert_array_equal(sc.cluster(np.zeros((num_classes, num_classes)), n_groups), expected)


def test_isolated_classes_fill_the_smallest_groups_and_confused_classes_stay_together():
    # Classes 1 and 4 confuse each other; 0, 2, 3, 5 are never confused. The confused pair (one
    # component, share round(3 * 2/6) = 1 group) stays together rather than being split to fill
    # groups; the isolated classes, in index order, go to the smallest group (lowest id on ties):
    # 0 -> new group, 2 -> new group, 3 -> smaller of those two (the first), 5 -> the other.
    counts = np.diag([9, 9, 9, 9, 9, 9])
    counts[1, 4] = 3
    np.testing.assert_array_equal(sc.cluster(counts, 3), [0, 1, 2, 0, 1, 2])


def test_isolated_classes_top_up_clustered_groups_to_keep_them_balanced():
    counts, truth = planted_confusion([4, 2], seed=0, noise=0.0)  # 6 confused classes, 2 blocks
    counts = np.pad(counts, ((0, 3), (0, 3)))  # classes 6, 7, 8: never seen, never predicted
    got = sc.cluster(counts, 2)
    assert partition(got[:6]) == partition(truth)  # the two blocks are kept apart
    small_block = got[np.flatnonzero(np.bincount(truth)[truth] == 2)[0]]
    # Block sizes 4 and 2: the isolated 6 and 7 go to the small block (sizes now 4 and 4), then 8
    # goes to the lower id among the tied groups.
    assert got[6] == small_block and got[7] == small_block
    assert got[8] == 0
    assert np.bincount(got).tolist() in ([5, 4], [4, 5])


@pytest.mark.parametrize(
    "n_groups, error, message",
    [
        (0, ValueError, "n_groups must be >= 1"),
        (-2, ValueError, "n_groups must be >= 1"),
        (5, ValueError, "n_groups=5 is more than the 4 classes"),
        (2.0, TypeError, "n_groups must be an integer"),
        (True, TypeError, "bool"),
    ],
)
def test_cluster_refuses_impossible_group_counts(n_groups, error, message):
    with pytest.raises(error, match=message):
        sc.cluster(np.ones((4, 4)), n_groups)


def test_cluster_accepts_numpy_integers_and_refuses_negative_seeds():
    assert_valid_assignment(sc.cluster(np.ones((4, 4)), np.int64(2), seed=np.int32(3)), 4, 2)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        sc.cluster(np.ones((4, 4)), 2, seed=-1)


@given(data=st.data())
def test_the_whole_routine_recovers_planted_groups_from_predictions(data):
    # A simulated dense model: each image is right with probability `accuracy`, and wrong mostly
    # (90%) within its true superclass.
    n_groups = data.draw(st.integers(2, 6))
    sizes = data.draw(st.lists(st.integers(2, 6), min_size=n_groups, max_size=n_groups))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    truth = rng.permutation(np.repeat(np.arange(n_groups), sizes))
    num_classes = truth.size
    labels = np.repeat(np.arange(num_classes), 100)
    predictions = labels.copy()
    wrong = rng.random(labels.size) > 0.6
    for i in np.flatnonzero(wrong):
        mates = np.flatnonzero((truth == truth[labels[i]]) & (np.arange(num_classes) != labels[i]))
        predictions[i] = rng.choice(mates) if rng.random() < 0.9 else rng.integers(num_classes)
    got = sc.superclasses_from_predictions(labels, predictions, num_classes, n_groups, seed=0)
    assert partition(got) == partition(truth)


# --------------------------------------------------------------------------------------------------
# Balance and table
# --------------------------------------------------------------------------------------------------


def test_group_balance_reports_sizes():
    balance = sc.group_balance(np.array([0, 1, 1, 2, 2, 2]))
    assert balance.sizes.tolist() == [1, 2, 3]
    assert (balance.min, balance.max, balance.mean) == (1, 3, 2.0)
    assert balance.std == pytest.approx(np.std([1, 2, 3]))
    assert str(balance) == "3 superclasses of 1-3 classes (mean 2.0, std 0.8)"
    assert sc.group_balance(np.array([0, 0]), n_groups=3).sizes.tolist() == [2, 0, 0]  # empty groups shown
    with pytest.raises(ValueError, match="out of range for n_groups=2"):
        sc.group_balance(np.array([0, 2]), n_groups=2)


def test_superclass_table_lists_a_few_short_names_per_superclass():
    names = ["goldfish, Carassius auratus", "tabby, tabby cat", "bullfrog", "Egyptian cat", "koala", "lion"]
    table = sc.superclass_table(np.array([0, 1, 0, 1, 2, 1]), names, per_group=2)
    assert table.splitlines() == [
        "superclass  size  classes",
        "-" * 47,  # as wide as the widest row
        "         0     2  goldfish, bullfrog",
        "         1     3  tabby, Egyptian cat (+1 more)",
        "         2     1  koala",
    ]


@given(data=st.data())
def test_superclass_table_has_one_row_per_superclass(data):
    num_classes = data.draw(st.integers(1, 40))
    drawn = data.draw(st.lists(st.integers(0, 9), min_size=num_classes, max_size=num_classes))
    assignment = sc.canonical_labels(np.asarray(drawn))
    per_group = data.draw(st.integers(1, 6))
    names = [f"class{c}" for c in range(num_classes)]
    rows = sc.superclass_table(assignment, names, per_group=per_group).splitlines()[2:]
    sizes = np.bincount(assignment)
    assert len(rows) == sizes.size
    for group, row in enumerate(rows):
        fields = row.split(None, 2)
        assert int(fields[0]) == group and int(fields[1]) == sizes[group]
        members = np.flatnonzero(assignment == group)
        assert fields[2].startswith(", ".join(names[c] for c in members[:per_group]))
        assert fields[2].endswith(f"(+{sizes[group] - per_group} more)") == (sizes[group] > per_group)


def test_superclass_table_needs_one_name_per_class():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        sc.superclass_table(np.array([0, 1, 0]), ["a", "b"])


# --------------------------------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(data=st.data())
def test_superclass_files_round_trip(tmp_path_factory, data):
    num_classes = data.draw(st.integers(1, 30))
    n_groups = data.draw(st.integers(1, num_classes))
    rest = num_classes - n_groups
    extra = data.draw(st.lists(st.integers(0, n_groups - 1), min_size=rest, max_size=rest))
    assignment = np.concatenate([np.arange(n_groups), np.asarray(extra, dtype=np.int64)])  # every group used
    assignment = assignment[np.random.default_rng(data.draw(st.integers(0, 99))).permutation(num_classes)]
    wnids = data.draw(st.lists(_text, min_size=num_classes, max_size=num_classes, unique=True))
    names = data.draw(st.lists(_text, min_size=num_classes, max_size=num_classes))
    meta = {"seed": 3, "note": data.draw(_text)}
    path = tmp_path_factory.mktemp("sc") / "superclasses.json"
    sc.save_superclasses(path, assignment, wnids, names, meta=meta)
    loaded = sc.load_superclasses(path)
    np.testing.assert_array_equal(loaded.assignment, assignment)
    assert loaded.assignment.dtype == np.int64
    assert loaded.wnids == tuple(wnids) and loaded.names == tuple(names) and loaded.meta == meta
    assert (loaded.num_classes, loaded.num_superclasses) == (num_classes, n_groups)
    np.testing.assert_array_equal(loaded.members(0), np.flatnonzero(assignment == 0))
    assert os.listdir(path.parent) == ["superclasses.json"]  # no temporary file left behind


def _valid_document():
    return {
        "format": "tinymoe-superclasses",
        "version": 1,
        "num_classes": 3,
        "num_superclasses": 2,
        "classes": [
            {"index": 0, "wnid": "n0", "name": "zero", "superclass": 0},
            {"index": 1, "wnid": "n1", "name": "one", "superclass": 1},
            {"index": 2, "wnid": "n2", "name": "two", "superclass": 0},
        ],
        "meta": {},
    }


def _mutate(change):
    document = _valid_document()
    change(document)
    return json.dumps(document)


MALFORMED = {
    "not json": ("{'format': ", "not valid JSON"),
    "a list": ("[1, 2]", "JSON object"),
    "wrong format": (_mutate(lambda d: d.update(format="other")), "not a superclasses file"),
    "newer version": (_mutate(lambda d: d.update(version=2)), "unsupported version 2"),
    "no classes": (_mutate(lambda d: d.pop("classes")), "missing key 'classes'"),
    "empty classes": (_mutate(lambda d: d.update(classes=[], num_classes=0)), "non-empty list"),
    "count mismatch": (_mutate(lambda d: d.update(num_classes=4)), "num_classes is 4 but 'classes' holds 3"),
    "record not object": (_mutate(lambda d: d["classes"].__setitem__(1, 5)), "record 1 is not an object"),
    "record lacks key": (_mutate(lambda d: d["classes"][2].pop("wnid")), r"record 2 lacks \['wnid'\]"),
    "out of order": (_mutate(lambda d: d["classes"][1].update(index=2)), "class order"),
    "negative group": (_mutate(lambda d: d["classes"][0].update(superclass=-1)), "superclass -1"),
    "string group": (_mutate(lambda d: d["classes"][0].update(superclass="0")), "superclass '0'"),
    "bool group": (_mutate(lambda d: d["classes"][0].update(superclass=True)), "superclass True"),
    "number of groups": (_mutate(lambda d: d.update(num_superclasses=3)), "num_superclasses is 3"),
    "empty group": (
        _mutate(lambda d: (d["classes"][1].update(superclass=2), d.update(num_superclasses=3))),
        r"superclasses \[1\] have no classes",
    ),
    "duplicate wnids": (_mutate(lambda d: d["classes"][2].update(wnid="n0")), "wnids must be unique"),
    "numeric name": (_mutate(lambda d: d["classes"][2].update(name=2)), "must be strings"),
    "meta not object": (_mutate(lambda d: d.update(meta=[1])), "'meta' must be an object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_superclass_files_are_refused_with_the_reason(tmp_path, case):
    text, reason = MALFORMED[case]
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(sc.SuperclassFileError, match=reason) as caught:
        sc.load_superclasses(path)
    assert str(path) in str(caught.value)


def test_the_valid_document_used_by_the_malformed_cases_loads(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_valid_document()), encoding="utf-8")
    assert sc.load_superclasses(path).assignment.tolist() == [0, 1, 0]


def test_loading_a_missing_or_binary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sc.load_superclasses(tmp_path / "nope.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(sc.SuperclassFileError, match="binary.json"):
        sc.load_superclasses(tmp_path / "binary.json")


@pytest.mark.parametrize(
    "assignment, wnids, names, meta, error, message",
    [
        ([0, 1], ["a", "b", "c"], ["x", "y"], None, ValueError, "3 wnids for 2 classes"),
        ([0, 1], ["a", "b"], ["x"], None, ValueError, "1 names for 2 classes"),
        ([0, 1], ["a", "a"], ["x", "y"], None, ValueError, "wnids must be unique"),
        ([0, 2], ["a", "b"], ["x", "y"], None, ValueError, r"superclasses \[1\] have no classes"),
        ([0, -1], ["a", "b"], ["x", "y"], None, ValueError, ">= 0"),
        ([0.0, 1.0], ["a", "b"], ["x", "y"], None, TypeError, "integer superclass ids"),
        ([0, 1], ["a", "b"], ["x", "y"], {"bad": object()}, TypeError, "JSON-serialisable"),
        ([0, 1], ["a", "b"], ["x", "y"], {"nan": float("nan")}, TypeError, "JSON-serialisable"),
    ],
)
def test_saving_bad_content_fails_and_leaves_the_old_file_untouched(
    tmp_path, assignment, wnids, names, meta, error, message
):
    path = tmp_path / "superclasses.json"
    path.write_text("old contents", encoding="utf-8")
    with pytest.raises(error, match=message):
        sc.save_superclasses(path, np.asarray(assignment), wnids, names, meta=meta)
    assert path.read_text(encoding="utf-8") == "old contents"
    assert os.listdir(tmp_path) == ["superclasses.json"]


def test_a_write_interrupted_before_the_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "superclasses.json"
    path.write_text("old contents", encoding="utf-8")

    def crash(source, destination):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        sc.save_superclasses(path, np.array([0, 1]), ["a", "b"], ["x", "y"])
    assert path.read_text(encoding="utf-8") == "old contents"
    assert os.listdir(tmp_path) == ["superclasses.json"]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _write_predictions(path, num_groups=3, seed=0, names=True):
    counts, truth = planted_confusion([3, 4, 2][:num_groups], seed=seed, noise=0.05)
    # Expand the counts back into one (label, prediction) pair per image.
    labels = np.repeat(np.arange(len(counts)), counts.sum(axis=1))
    predictions = np.concatenate([np.repeat(np.arange(len(counts)), row) for row in counts])
    wnids = np.array([f"n{c:08d}" for c in range(len(counts))])
    arrays = {"labels": labels, "predictions": predictions, "wnids": wnids}
    if names:
        arrays["names"] = np.array([f"thing {c}, synonym" for c in range(len(counts))])
    np.savez(path, **arrays)
    return truth, labels, predictions


def test_command_line_writes_superclasses_and_prints_the_table(tmp_path, capsys):
    truth, labels, predictions = _write_predictions(tmp_path / "heldout.npz")
    out = tmp_path / "superclasses.json"
    argv = ["--predictions", str(tmp_path / "heldout.npz"), "--experts", "3", "--out", str(out), "--seed", "4"]
    assert sc_main(argv) == 0
    printed = capsys.readouterr().out
    loaded = sc.load_superclasses(out)
    assert partition(loaded.assignment) == partition(truth)
    expected = sc.superclasses_from_predictions(labels, predictions, 9, 3, seed=4)
    np.testing.assert_array_equal(loaded.assignment, expected)
    assert loaded.wnids[0] == "n00000000" and loaded.names[0] == "thing 0, synonym"
    assert loaded.meta["seed"] == 4 and loaded.meta["held_out_images"] == labels.size
    assert loaded.meta["held_out_accuracy"] == pytest.approx(np.mean(labels == predictions))
    assert loaded.meta["balance"]["sizes"] == np.bincount(loaded.assignment).tolist()
    assert sc.superclass_table(loaded.assignment, loaded.names) in printed
    assert f"wrote {out}" in printed


def test_command_line_without_names_uses_wnids(tmp_path, capsys):
    _write_predictions(tmp_path / "heldout.npz", names=False)
    out = tmp_path / "s.json"
    sc_main(["--predictions", str(tmp_path / "heldout.npz"), "-E", "2", "--output", str(out)])
    assert sc.load_superclasses(out).names == sc.load_superclasses(out).wnids


@pytest.mark.parametrize(
    "prepare, experts, message",
    [
        (lambda p: _write_predictions(p), "10", "n_groups=10 is more than the 9 classes"),
        (lambda p: np.savez(p, labels=np.zeros(3, int)), "2", "lacks arrays"),
        (
            lambda p: np.savez(p, labels=np.zeros(2, int), predictions=np.zeros(2, int), wnids=np.array([1], object)),
            "1",
            "pickle",
        ),
        (lambda p: p.write_bytes(b"not a zip"), "2", "not a readable .npz"),
        (lambda p: np.save(p, np.zeros(3)), "2", "single array"),
    ],
)
def test_command_line_reports_bad_input_as_an_error_message(tmp_path, capsys, prepare, experts, message):
    path = tmp_path / "heldout.npz"
    prepare(path)
    if not path.exists():  # np.save appends .npy
        os.replace(str(path) + ".npy", path)
    with pytest.raises(SystemExit) as exit_:
        sc_main(["--predictions", str(path), "--experts", experts, "--out", str(tmp_path / "s.json")])
    assert exit_.value.code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_command_line_needs_exactly_one_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sc_main(["--experts", "3"])
    assert exit_.value.code == 2
    assert "--checkpoint" in capsys.readouterr().err
