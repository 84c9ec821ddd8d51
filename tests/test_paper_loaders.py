"""Tests for the paper-scale loaders: DomainNet's official split files, Camelyon17-WILDS, hub config names."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from warmfed_flwr.config.schema import DataConfig
from warmfed_flwr.data import hub, load_benchmark
from warmfed_flwr.data.partition import DomainArrays, cap_domains, partition_by_domain
from warmfed_flwr.errors import DataError

DOMAINNET_CLASSES = ("aircraft_carrier", "bird", "zebra")
"""Official labels 0, 1, 2."""


def _colour(*ids: int) -> tuple[int, int, int]:
    """A solid colour that identifies an image exactly after resizing."""
    return tuple(int(10 + 40 * i) for i in ids)  # type: ignore[return-value]


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _pixels(images: torch.Tensor) -> set[tuple[int, ...]]:
    """The colour of each solid-colour image of a float32 [N,3,S,S] batch."""
    return {tuple((img[:, 0, 0] * 255).round().int().tolist()) for img in images}


# ---------------------------------------------------------------- DomainNet


def _write_domainnet(root: Path, domains: tuple[str, ...] = ("clipart", "sketch")) -> dict[str, set[tuple[int, ...]]]:
    """Domains with 3 images per class (2 train, 1 test in the split files) plus one unlisted image; test colours."""
    test_colours: dict[str, set[tuple[int, ...]]] = {}
    for d, domain in enumerate(domains):
        lines = {"train": [], "test": []}
        test_colours[domain] = set()
        for label, name in enumerate(DOMAINNET_CLASSES):
            for i in range(3):
                relative = f"{domain}/{name}/{domain}_{label:03d}_{i:06d}.png"
                _write_image(root / relative, _colour(d, label, i))
                split = "test" if i == 2 else "train"
                lines[split].append(f"{relative} {label}")
                if split == "test":
                    test_colours[domain].add(_colour(d, label, i))
            _write_image(root / domain / name / "unlisted.png", (255, 255, 255))
        for split, rows in lines.items():
            (root / f"{domain}_{split}.txt").write_text("\n".join(rows) + "\n")
    return test_colours


def _domainnet(root: Path, **kwargs) -> DataConfig:
    kwargs.setdefault("num_clients", 2)
    return DataConfig(source="domainnet", path=str(root), image_size=8, **kwargs)


def test_domainnet_official_split_is_each_domains_train_test(tmp_path: Path) -> None:
    test_colours = _write_domainnet(tmp_path / "domainnet")
    bench = load_benchmark(_domainnet(tmp_path / "domainnet", test_fraction=0.5), seed=0, cache_dir=tmp_path / "c")
    assert bench.class_names == ["aircraft carrier", "bird", "zebra"]
    assert [c.name for c in bench.clients] == ["clipart", "sketch"]
    for d, client in enumerate(bench.clients):
        assert (len(client.train), len(client.test)) == (6, 3)
        assert _pixels(client.test.tensors[0]) == test_colours[client.name]
        assert (255, 255, 255) not in _pixels(client.train.tensors[0])
        for images, labels in (client.train.tensors, client.test.tensors):
            for image, label in zip(images, labels, strict=True):
                assert (image[1, 0, 0] * 255).round().int().item() == _colour(d, int(label))[1]


def test_domainnet_class_subset_and_domain_choice(tmp_path: Path) -> None:
    _write_domainnet(tmp_path / "domainnet")
    cfg = _domainnet(tmp_path / "domainnet", classes="zebra, bird", domains="sketch", num_clients=1)
    bench = load_benchmark(cfg, seed=0, cache_dir=tmp_path / "c")
    assert bench.class_names == ["bird", "zebra"]
    (sketch,) = bench.clients
    assert (sketch.name, len(sketch.train), len(sketch.test)) == ("sketch", 4, 2)
    labels = sketch.test.tensors[1]
    assert _pixels(sketch.test.tensors[0][labels == 0]) == {_colour(1, 1, 2)}
    assert _pixels(sketch.test.tensors[0][labels == 1]) == {_colour(1, 2, 2)}


def _missing_image(root: Path) -> tuple[str, ...]:
    (root / "sketch" / "bird" / "sketch_001_000001.png").unlink()
    return ("sketch_train.txt line 4", "sketch/bird/sketch_001_000001.png", "does not exist")


def _label_mismatch(root: Path) -> tuple[str, ...]:
    path = root / "clipart_test.txt"
    path.write_text(path.read_text().replace("clipart_001_000002.png 1", "clipart_001_000002.png 0"))
    return ("clipart_test.txt line 2", "label 0", "bird", "aircraft_carrier")


def _unknown_class(root: Path) -> tuple[str, ...]:
    return ("data.classes", "tiger", "aircraft_carrier, bird, zebra")


def _missing_test_file(root: Path) -> tuple[str, ...]:
    (root / "clipart_test.txt").unlink()
    return ("clipart_test.txt", "missing")


def _malformed_line(root: Path) -> tuple[str, ...]:
    path = root / "sketch_train.txt"
    path.write_text("sketch/bird/x.png\n" + path.read_text())
    return ("sketch_train.txt line 1", "sketch/<class>/<file> <label>")


def _no_split_files(root: Path) -> tuple[str, ...]:
    for path in root.glob("*.txt"):
        path.unlink()
    return ("_train.txt", str(root))


@pytest.mark.parametrize(
    "break_it", [_missing_image, _label_mismatch, _unknown_class, _missing_test_file, _malformed_line, _no_split_files]
)
def test_domainnet_errors_are_one_line_and_name_the_file(tmp_path: Path, break_it) -> None:
    root = tmp_path / "domainnet"
    _write_domainnet(root)
    names = break_it(root)
    classes = "tiger,bird" if break_it is _unknown_class else ""
    with pytest.raises(DataError) as info:
        load_benchmark(_domainnet(root, classes=classes), seed=0, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_classes_is_refused_by_sources_that_ignore_it(tmp_path: Path) -> None:
    cfg = DataConfig(source="imagefolder", path=str(tmp_path), classes="bird", num_clients=1)
    with pytest.raises(DataError, match="data.classes.*domainnet"):
        load_benchmark(cfg, seed=0, cache_dir=tmp_path)


# ---------------------------------------------------------------- Camelyon17-WILDS

CAMELYON_HEADER = ["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]


def _write_camelyon(root: Path, centers: tuple[int, ...] = (0, 1, 3)) -> list[list[str]]:
    """A WILDS-style metadata.csv (patients 20*center + 0/1, 4 patches each, alternating tumor) and its patches."""
    rows = []
    for center in centers:
        for patient in (20 * center, 20 * center + 1):
            for k in range(4):
                x, y, tumor, node = 96 * k, 32 * k, k % 2, patient % 5
                folder = f"patient_{patient:03d}_node_{node}"
                _write_image(root / "patches" / folder / f"patch_{folder}_x_{x}_y_{y}.png",
                             _colour(center, tumor, k), (96, 96))
                rows.append([str(len(rows)), f"{patient:03d}", str(node), str(x), str(y), str(tumor),
                             str(patient // 2), str(center), str(int(k % 3 == 0))])
    _write_csv(root / "metadata.csv", CAMELYON_HEADER, rows)
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _camelyon(root: Path, **kwargs) -> DataConfig:
    kwargs.setdefault("num_clients", 3)
    return DataConfig(source="camelyon17", path=str(root), image_size=8, test_fraction=0.25, **kwargs)


def test_camelyon_hospitals_labels_and_classes(tmp_path: Path) -> None:
    _write_camelyon(tmp_path / "camelyon17_v1.0")
    bench = load_benchmark(_camelyon(tmp_path / "camelyon17_v1.0"), seed=0, cache_dir=tmp_path / "c")
    assert bench.class_names == ["normal tissue", "tumor tissue"]
    assert [c.name for c in bench.clients] == ["hospital0", "hospital1", "hospital3"]
    for center, client in zip((0, 1, 3), bench.clients, strict=True):
        assert (len(client.train), len(client.test)) == (6, 2)
        images = torch.cat([client.train.tensors[0], client.test.tensors[0]])
        labels = torch.cat([client.train.tensors[1], client.test.tensors[1]])
        assert np.bincount(labels.numpy()).tolist() == [4, 4]
        expected = {(int(tumor), _colour(center, tumor, k)) for tumor in (0, 1) for k in range(4) if k % 2 == tumor}
        found = {(int(label), tuple((img[:, 0, 0] * 255).round().int().tolist()))
                 for img, label in zip(images, labels, strict=True)}
        assert found == expected
    only = load_benchmark(_camelyon(tmp_path / "camelyon17_v1.0", domains="hospital3", num_clients=1), 0,
                          tmp_path / "c")
    assert [c.name for c in only.clients] == ["hospital3"]
    with pytest.raises(DataError, match="hospital2.*hospital0, hospital1, hospital3"):
        load_benchmark(_camelyon(tmp_path / "camelyon17_v1.0", domains="hospital2", num_clients=1), 0, tmp_path / "c")


def _no_metadata(root: Path) -> tuple[str, ...]:
    (root / "metadata.csv").unlink()
    return ("metadata.csv", "missing", "camelyon17_v1.0")


def _no_tumor_column(root: Path) -> tuple[str, ...]:
    rows = list(csv.reader((root / "metadata.csv").open()))
    _write_csv(root / "metadata.csv", [h if h != "tumor" else "label" for h in rows[0]], rows[1:])
    return ("metadata.csv", "column(s) tumor")


def _missing_patch(root: Path) -> tuple[str, ...]:
    (root / "patches" / "patient_021_node_1" / "patch_patient_021_node_1_x_96_y_32.png").unlink()
    return ("metadata.csv line 15", "patch_patient_021_node_1_x_96_y_32.png", "does not exist")


def _bad_tumor_value(root: Path) -> tuple[str, ...]:
    rows = list(csv.reader((root / "metadata.csv").open()))
    rows[3][5] = "2"
    _write_csv(root / "metadata.csv", rows[0], rows[1:])
    return ("metadata.csv line 4", "tumor", "0 or 1")


@pytest.mark.parametrize("break_it", [_no_metadata, _no_tumor_column, _missing_patch, _bad_tumor_value])
def test_camelyon_errors_are_one_line_and_name_the_file(tmp_path: Path, break_it) -> None:
    root = tmp_path / "camelyon17_v1.0"
    _write_camelyon(root)
    names = break_it(root)
    with pytest.raises(DataError) as info:
        load_benchmark(_camelyon(root), seed=0, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


# ---------------------------------------------------------------- predefined split


def test_predefined_split_survives_take_and_cap_and_wins_over_test_fraction() -> None:
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=-1)
    arrays = DomainArrays(images, np.arange(10) % 2, np.arange(10) >= 7)
    assert arrays.take(np.array([8, 1])).is_test.tolist() == [True, False]
    capped = cap_domains({"a": arrays}, 6, seed=0)["a"]
    assert capped.is_test is not None and len(capped.is_test) == 6
    (split,) = partition_by_domain({"a": arrays}, test_fraction=0.5, seed=3)
    assert split.test.images[:, 0, 0, 0].tolist() == [7, 8, 9]
    assert split.train.images[:, 0, 0, 0].tolist() == list(range(7))
    with pytest.raises(ValueError, match="is_test"):
        DomainArrays(images, np.zeros(10, dtype=np.int64), np.zeros(9, dtype=bool))


# ---------------------------------------------------------------- hub


def _hub_dataset(count: int = 11):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    columns = {
        "img": [Image.new("RGB", (6 + i % 3, 5), _colour(i % 3, i // 3, 1)) for i in range(count)],
        "label": [i % 3 for i in range(count)],
        "style": ["a" if i < 4 else "b" for i in range(count)],
    }
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=["x", "y", "z"]), "style": Value("string")})
    return Dataset.from_dict(columns, features=features)


def test_hub_config_name_reaches_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []
    dataset = _hub_dataset()

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({"train": dataset.select(range(6)), "test": dataset.select(range(6, 11))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(source="hub", hub_id="someone/paper-data", hub_config="camelyon17", hub_image_column="img",
                     hub_domain_column="style", num_clients=2, image_size=4)
    bench = load_benchmark(cfg, seed=0, cache_dir=tmp_path)
    assert calls == [("someone/paper-data", "camelyon17")]
    assert [c.name for c in bench.clients] == ["a", "b"]
    load_benchmark(DataConfig(source="hub", hub_id="someone/paper-data", hub_image_column="img", num_clients=1),
                   seed=0, cache_dir=tmp_path)
    assert calls[-1] == ("someone/paper-data", None)


def test_hub_decodes_in_batches_into_one_array(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    batch_sizes = []
    original_iter = datasets.Dataset.iter

    def spy_iter(self, batch_size, drop_last_batch=False):
        for batch in original_iter(self, batch_size, drop_last_batch):
            batch_sizes.append(len(next(iter(batch.values()))))
            yield batch

    monkeypatch.setattr(hub, "DECODE_BATCH", 3)
    monkeypatch.setattr(datasets.Dataset, "iter", spy_iter)
    domains, class_names = hub.dataset_to_domains(_hub_dataset(), "img", "label", "style", 4)
    assert class_names == ["x", "y", "z"]
    assert batch_sizes == [3, 1, 3, 3, 1]
    b = domains["b"]
    assert b.images.shape == (7, 4, 4, 3) and b.images.dtype == np.uint8
    assert [tuple(px) for px in b.images[:, 0, 0].tolist()] == [_colour(i % 3, i // 3, 1) for i in range(4, 11)]
    assert b.labels.tolist() == [i % 3 for i in range(4, 11)]
    assert domains["a"].images.base is not None and domains["a"].images.base is b.images.base
