"""Whole slides: reading, tiling, tissue detection, references, exports."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atl_desktop.cli import main as atl
from atl_desktop.data import slides as slides_module
from atl_desktop.data.datasets import project_dataset
from atl_desktop.data.decode import load_image
from atl_desktop.data.slide_export import export_slide_csv, geojson_document
from atl_desktop.data.slides import SLIDES, SlideError, SlideInfo, backend_for, read_context
from atl_desktop.data.tiling import (
    TilingParams,
    add_slide,
    make_grid,
    otsu_threshold,
    saturation,
    tissue_fractions,
)
from atl_desktop.store import PatchRef, Project, ProjectError
from tests.slidefiles import TISSUE, tissue_image, write_pyramid

TISSUE_CELLS = {(x, y) for x in (256, 384, 512) for y in (128, 256, 384)}  # the 3 x 3 block at 128 px


@pytest.fixture
def slide(tmp_path):
    path = tmp_path / "slides" / "s1.tif"
    path.parent.mkdir()
    levels = write_pyramid(path, tissue_image())
    yield path, levels
    SLIDES.close()


def _add(project, path, **params):
    return collect_result(add_slide(project, path, TilingParams(**params)))


def collect_result(job):
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


# ---- pure pieces, values worked out by hand ----------------------------------------------


def test_saturation_by_hand():
    rgb = np.array([[[200, 80, 160], [0, 0, 0], [255, 255, 255], [100, 50, 0]]], np.uint8)
    assert saturation(rgb)[0].tolist() == pytest.approx([0.6, 0.0, 0.0, 1.0])


def test_otsu_threshold_by_hand():
    # Bins of 1/256: 0.1 -> bin 25, 0.5 -> bin 128, 0.9 -> bin 230. With bin centres,
    # splitting after 0.1 gives w0 w1 (mu0 - mu1)^2 = 2*4*0.70117^2 = 3.93, after 0.5
    # 3*3*0.66667^2 = 4.00. Every cut after bins 128..229 makes that split; the middle
    # one, after bin (128 + 229) // 2 = 178, is the edge 179/256.
    values = np.array([0.1, 0.1, 0.5, 0.9, 0.9, 0.9])
    assert otsu_threshold(values) == 179 / 256
    assert otsu_threshold(np.full(10, 0.3)) == 1.0  # one class: nothing above
    # Two modes, bins 25 and 230: every cut after bins 25..229 ties; the middle one,
    # after bin (25 + 229) // 2 = 127, is the edge 128/256.
    assert otsu_threshold(np.array([0.1, 0.1, 0.9, 0.9])) == 0.5


def test_tissue_fractions_weight_partial_cells_by_area():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # each cell covers 10 x 10 level-0 pixels
    xs = ys = np.array([0, 5, 10, 15])
    f = tissue_fractions(mask, 10.0, 10.0, xs, ys, 20)
    assert f[0, 0] == 1.0  # cells (0..1, 0..1): all tissue
    assert f[2, 2] == pytest.approx(0.25)  # cells 1..2: only (1, 1)
    # [5, 25) in each axis covers half of cell 0, all of 1, half of 2: tissue (0.5 + 1)^2 of 2^2.
    assert f[1, 1] == pytest.approx(2.25 / 4)
    # [15, 35): half of cell 1 (the only tissue), all of 2, half of 3: 0.5^2 of 2^2.
    assert f[3, 3] == pytest.approx(0.25 / 4)


def test_block_mean_averages_whole_and_cut_blocks():
    from atl_desktop.data.tiling import _block_mean

    tile = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    out = _block_mean(tile, 2)  # blocks of rows (0-1, 2-3, 4) and columns (0-1, 2)
    assert out.shape == (3, 2, 3)
    assert out[0, 0].tolist() == np.rint(tile[0:2, 0:2].reshape(-1, 3).mean(0)).tolist()
    assert out[2, 1].tolist() == tile[4, 2].tolist()  # a cut block of one pixel is that pixel
    assert out[1, 1].tolist() == np.rint(tile[2:4, 2].mean(0)).tolist()


def test_grid_counts_and_resolution():
    info = SlideInfo(1024, 768, ((1024, 768, 1.0), (512, 384, 2.0), (256, 192, 4.0)), 0.5, 20.0, "test")
    grid = make_grid(info, TilingParams(patch=128))
    assert (len(grid.xs), len(grid.ys), grid.level, grid.size) == (8, 6, 0, 128)
    grid = make_grid(info, TilingParams(patch=128, overlap=64))  # (1024-128)/64+1, (768-128)/64+1
    assert (len(grid.xs), len(grid.ys)) == (15, 11)
    grid = make_grid(info, TilingParams(patch=128, mpp=1.0))  # 2 level-0 px per output px
    assert (grid.level, grid.size, grid.extent, len(grid.xs)) == (1, 128, 256, 4)
    grid = make_grid(info, TilingParams(patch=128, mpp=0.75))  # 1.5: read 192 px at level 0
    assert (grid.level, grid.size, grid.extent) == (0, 192, 192)
    grid = make_grid(info, TilingParams(patch=128, magnification=5))  # 20x / 5x = 4
    assert (grid.level, grid.size) == (2, 128)
    bare = SlideInfo(100, 100, ((100, 100, 1.0),), None, None, "test")
    with pytest.raises(ProjectError, match="microns per pixel"):
        make_grid(bare, TilingParams(patch=16, mpp=1.0))
    with pytest.raises(ProjectError, match="objective"):
        make_grid(bare, TilingParams(patch=16, magnification=10))
    with pytest.raises(ProjectError, match="Overlap"):
        TilingParams(patch=16, overlap=16)


# ---- tiling a generated slide ------------------------------------------------------------


def test_tissue_detection_keeps_tissue_and_excludes_background(tmp_path, slide):
    path, _ = slide
    with Project.create(tmp_path / "p.atl") as project:
        report = _add(project, path, patch=128, tissue_side=256)
        assert report.candidates == 48 and report.level == 0
        cells = {(p.x, p.y) for p in project.patches(report.slide_id)}
        assert cells == TISSUE_CELLS  # the 40 x 40 blob covers 10% of its cell: below 0.5
        assert all(p.tissue == pytest.approx(1.0) for p in project.patches(report.slide_id))
        assert 0.2 < report.threshold < 0.5  # midway between glass (S < 0.05) and tissue (0.6)
        # A low minimum keeps the blob's cell (704, 576) too, and nothing of the background.
        report = _add(project, path, patch=128, tissue_side=256, min_tissue=0.05)
        assert report.added == 1 and report.duplicates == 9
        blob = [p for p in project.patches(report.slide_id) if (p.x, p.y) == (640, 512)]
        assert blob and blob[0].tissue == pytest.approx(1600 / 128**2)
        assert len(project.patches(report.slide_id)) == 10


def test_patch_reads_match_source_pixels(tmp_path, slide):
    path, levels = slide
    with Project.create(tmp_path / "p.atl") as project:
        _add(project, path, patch=128, tissue_side=256)
        _add(project, path, patch=64, level=1, tissue_side=256)
        for record in project.images():
            ref = project.image_path(record)
            assert isinstance(ref, PatchRef)
            pixels = np.asarray(load_image(ref))
            source = levels[ref.level]
            lx, ly = int(ref.x / ref.downsample), int(ref.y / ref.downsample)
            assert pixels.shape == (ref.out_size, ref.out_size, 3)
            assert np.array_equal(pixels, source[ly: ly + ref.size, lx: lx + ref.size])


def test_resampled_patches_average_the_finer_level(tmp_path, slide):
    path, levels = slide
    with Project.create(tmp_path / "p.atl") as project:
        _add(project, path, patch=64, downsample=2.0, min_tissue=0.0, tissue_side=256)
        ref = project.image_path(project.images()[0])
        assert (ref.level, ref.size) == (1, 64)
        # 1.5 x: read 96 px at level 0, shrink to 64 (box filter).
        report = _add(project, path, patch=64, downsample=1.5, min_tissue=0.9, tissue_side=256)
        ref = project.image_path(project.image(report.image_ids[0]))
        assert (ref.level, ref.size, ref.out_size) == (0, 96, 64)
        expected = Image.fromarray(levels[0][ref.y: ref.y + 96, ref.x: ref.x + 96]).resize(
            (64, 64), Image.Resampling.BOX)
        assert np.array_equal(np.asarray(load_image(ref)), np.asarray(expected))


def test_datasets_read_patches_transparently_and_from_threads(tmp_path, slide):
    path, _ = slide
    with Project.create(tmp_path / "p.atl") as project:
        project.add_class("tumour")
        report = _add(project, path, patch=128, tissue_side=256)
        dataset = project_dataset(project, labelled=None)
        assert len(dataset) == 9
        x, label = dataset[0]
        assert tuple(x.shape) == (3, 128, 128) and label == -1
        assert x[:, 64, 64].tolist() == pytest.approx([c / 255 for c in TISSUE], abs=13 / 255)
        SLIDES.close()
        refs = [project.image_path(project.image(i)) for i in report.image_ids]
        sequential = [np.asarray(load_image(r)).copy() for r in refs]
        SLIDES.close()
        results = {}

        def read(k):
            results[k] = np.asarray(load_image(refs[k]))

        threads = [threading.Thread(target=read, args=(k,)) for k in range(len(refs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(results[k], sequential[k]) for k in range(len(refs)))


def test_references_survive_moving_the_project_with_its_slides(tmp_path, slide):
    path, levels = slide
    home = tmp_path
    with Project.create(home / "p.atl") as project:
        _add(project, path, patch=128, tissue_side=256)
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.move(str(home), moved)
    try:
        with Project.open(moved / "p.atl") as project:
            ref = project.image_path(project.images()[0])
            assert ref.slide == moved / "slides" / "s1.tif"
            assert np.array_equal(np.asarray(load_image(ref)),
                                  levels[0][ref.y: ref.y + 128, ref.x: ref.x + 128])
            assert project.check_files() == {"missing": [], "changed": []}
    finally:
        shutil.move(str(moved), home)


def test_project_moved_alone_falls_back_to_the_original_slide_path(tmp_path, slide):
    path, _ = slide
    with Project.create(tmp_path / "p.atl") as project:
        _add(project, path, patch=128, tissue_side=256)
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    shutil.move(str(tmp_path / "p.atl"), elsewhere / "p.atl")
    shutil.move(str(tmp_path / "p.atl.d"), elsewhere / "p.atl.d")
    with Project.open(elsewhere / "p.atl") as project:
        ref = project.image_path(project.images()[0])
        assert ref.slide == path and load_image(ref).size == (128, 128)


def test_missing_slide_is_reported_and_relocated(tmp_path, slide, capsys):
    path, _ = slide
    project_file = tmp_path / "p.atl"
    with Project.create(project_file) as project:
        report = _add(project, path, patch=128, tissue_side=256)
    hidden = tmp_path / "hidden.tif"
    path.rename(hidden)
    SLIDES.close()
    with Project.open(project_file) as project:
        assert sorted(project.check_files()["missing"]) == sorted(report.image_ids)
        assert project.check_slides()["missing"] == [report.slide_id]
        with pytest.raises(SlideError, match="not found.*relocate"):
            load_image(project.image_path(project.images()[0]))
    assert atl(["slide", "list", str(project_file)]) == 0
    assert "MISSING" in capsys.readouterr().out
    assert atl(["slide", "relocate", str(project_file), str(report.slide_id), str(hidden)]) == 0
    with Project.open(project_file) as project:
        assert project.check_files()["missing"] == []
        assert load_image(project.image_path(project.images()[0])).size == (128, 128)


def test_the_same_slide_again_merges(tmp_path, slide):
    path, _ = slide
    with Project.create(tmp_path / "p.atl") as project:
        first = _add(project, path, patch=128, tissue_side=256)
        again = _add(project, path, patch=128, tissue_side=256)
        assert (again.added, again.duplicates, again.slide_id) == (0, 9, first.slide_id)
        assert len(project.slides()) == 1 and len(project.images()) == 9


def test_cancelled_tiling_leaves_nothing(tmp_path, slide):
    path, _ = slide
    with Project.create(tmp_path / "p.atl") as project:
        job = add_slide(project, path, TilingParams(patch=128))
        next(job), next(job)
        job.close()
        assert project.slides() == [] and project.images() == []


def test_plain_large_png_and_context(tmp_path):
    img = tissue_image(seed=3)[:, :768]
    path = tmp_path / "big.png"
    Image.fromarray(img).save(path)
    with Project.create(tmp_path / "p.atl") as project:
        report = _add(project, path, patch=64, tissue_side=512)
        assert report.kept > 0
        ref = project.image_path(project.image(report.image_ids[0]))
        assert np.array_equal(np.asarray(load_image(ref)), img[ref.y: ref.y + 64, ref.x: ref.x + 64])
        context, box = read_context(ref, 3.0, 96)
        assert context.size == (96, 96) and box == pytest.approx((1 / 3, 1 / 3, 2 / 3, 2 / 3))
        centre = np.asarray(context)[32:64, 32:64]
        expected = np.asarray(Image.fromarray(img[ref.y: ref.y + 64, ref.x: ref.x + 64]).resize(
            (32, 32), Image.Resampling.BOX)).astype(int)
        assert np.abs(centre.astype(int) - expected).max() <= 1
    SLIDES.close()


def test_without_the_extras_a_message_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(slides_module, "_has", lambda name: False)
    with pytest.raises(SlideError, match=r"pip install 'atl-desktop\[slides\]'"):
        backend_for(Path("x.svs"))
    with pytest.raises(SlideError, match="openslide-python openslide-bin"):
        backend_for(Path("x.mrxs"))
    assert backend_for(Path("x.tif")) == "pillow"  # a plain TIFF still opens
    with pytest.raises(SlideError, match="not a slide"):
        backend_for(Path("x.doc"))


# ---- exports -----------------------------------------------------------------------------


def test_csv_and_geojson_exports(tmp_path, slide, capsys):
    path, _ = slide
    project_file = tmp_path / "p.atl"
    with Project.create(project_file) as project:
        tumour = project.add_class("tumour", colour="#E69F00")
        project.add_class("stroma")
        report = _add(project, path, patch=128, tissue_side=256)
        first = report.image_ids[0]
        project.set_label(first, tumour)
        out = tmp_path / "s.csv"
        assert export_slide_csv(project, report.slide_id, out) == 9
        document = geojson_document(project, report.slide_id)
    rows = out.read_text().splitlines()
    assert rows[0].startswith("image_id,slide,x,y,width,height,level,tissue,label")
    assert len(rows) == 10 and rows[1].split(",")[8] == "tumour"
    features = {f["properties"]["atl"]["image_id"]: f for f in document["features"]}
    labelled = features[first]
    x, y = labelled["geometry"]["coordinates"][0][0]
    assert labelled["geometry"]["coordinates"][0][2] == [x + 128, y + 128]
    assert labelled["properties"]["classification"] == {"name": "tumour", "color": [230, 159, 0]}
    assert "classification" not in features[report.image_ids[1]]["properties"]  # no label, no scores
    assert atl(["slide", "export", str(project_file), str(tmp_path / "out"), "--format", "geojson"]) == 0
    written = json.loads(next((tmp_path / "out").glob("*.geojson")).read_text())
    assert len(written["features"]) == 9


def test_label_exports_write_patch_pixels_and_references(tmp_path, slide):
    from atl_desktop.data.export import export_csv, export_imagefolder
    from atl_desktop.jobs import collect

    path, levels = slide
    with Project.create(tmp_path / "p.atl") as project:
        tumour = project.add_class("tumour")
        report = _add(project, path, patch=128, tissue_side=256)
        project.set_label(report.image_ids[0], tumour)
        ref = project.image_path(project.image(report.image_ids[0]))
        export_csv(project, tmp_path / "labels.csv")
        collect(export_imagefolder(project, tmp_path / "folders"))
    line = (tmp_path / "labels.csv").read_text().splitlines()[1]
    assert line.startswith(f"{path}#level=0&x={ref.x}&y={ref.y}&size=128,tumour")
    (png,) = (tmp_path / "folders" / "tumour").iterdir()
    with Image.open(png) as written:
        assert np.array_equal(np.asarray(written), levels[0][ref.y: ref.y + 128, ref.x: ref.x + 128])


def test_a_label_export_never_writes_onto_a_slide_or_into_its_folder(tmp_path, slide):
    from atl_desktop.data.export import ExportError, export_imagefolder, export_json
    from atl_desktop.jobs import collect

    path, _ = slide
    before = path.read_bytes()
    with Project.create(tmp_path / "p.atl") as project:
        tumour = project.add_class("tumour")
        report = _add(project, path, patch=128, tissue_side=256)
        project.set_label(report.image_ids[0], tumour)
        with pytest.raises(ExportError, match="slide"):
            export_json(project, path, overwrite=True)
        with pytest.raises(ExportError, match="holds files of"):
            collect(export_imagefolder(project, path.parent, overwrite=True))
    assert path.read_bytes() == before


def test_stain_command_keeps_the_choice_and_writes_a_preview(tmp_path, slide):
    from atl_desktop.store.keys import STAIN_SETTING

    path, _ = slide
    project_file = tmp_path / "p.atl"
    with Project.create(project_file) as project:
        report = _add(project, path, patch=128, tissue_side=256)
    preview = tmp_path / "preview.png"
    assert atl(["slide", "stain", str(project_file), "--method", "reinhard", "--reference",
                str(report.image_ids[0]), "--preview", str(preview), "--samples", "4"]) == 0
    with Project.open(project_file) as project:
        setting = project.get_setting(STAIN_SETTING)
    assert setting["method"] == "reinhard" and setting["reference_image"] == f"image {report.image_ids[0]}"
    with Image.open(preview) as sheet:
        assert sheet.size == (4 * 128, 2 * 128)
    assert atl(["slide", "stain", str(project_file), "--method", "none"]) == 0
    with Project.open(project_file) as project:
        assert project.get_setting(STAIN_SETTING) is None


def test_damaged_slide_gets_a_one_line_message(tmp_path, slide):
    path, _ = slide
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(range(256)) * 4)  # a header, then junk
    with Project.create(tmp_path / "p.atl") as project:
        with pytest.raises(SlideError, match="damaged.tif: not a slide tiffslide can read"):
            _add(project, damaged)
        assert project.slides() == []


def test_import_points_whole_slides_to_slide_add(tmp_path, capsys):
    Project.create(tmp_path / "p.atl").close()
    (tmp_path / "x.svs").write_bytes(b"II*\x00")
    assert atl(["import", str(tmp_path / "p.atl"), str(tmp_path / "x.svs")]) == 1
    assert "atl slide add" in capsys.readouterr().err


def test_openslide_backend_reads_the_same_pixels(tmp_path, slide):
    pytest.importorskip("openslide")
    from atl_desktop.data.slides import OpenSlideReader

    path, levels = slide
    reader = OpenSlideReader(path)
    try:
        assert (reader.info.width, reader.info.height, reader.info.mpp) == (1024, 768, 0.5)
        assert np.array_equal(reader.read(256, 128, 0, 128, 128), levels[0][128:256, 256:384])
        edge = reader.read(1000, 700, 0, 64, 64)  # 24 columns inside, the rest white
        assert np.array_equal(edge[:, :24], levels[0][700:764, 1000:1024])
        assert (edge[:, 24:] == 255).all()
    finally:
        reader.close()


def test_a_reader_closed_under_a_reading_thread_is_reopened(slide):
    from atl_desktop.data.slides import SlideCache

    path, levels = slide
    cache = SlideCache(max_open=1)
    cache.reader(path).close()  # as an eviction by another thread would
    assert np.array_equal(cache.read(path, 0, 0, 0, 16, 16), levels[0][:16, :16])
    cache.close()
