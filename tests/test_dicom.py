"""CT series on disk: DICOM (the files pydicom ships, offline) and 16-bit PNG/TIFF slices.

Oracles: stored pixels read with pydicom/PIL here and converted to HU by hand (slope·v + intercept),
the window written from its definition, PIL's antialiased bilinear resize (an independent
implementation of the resampling the source uses through torch).
"""
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from datamodules.dicom import DicomFolder, SliceFolder

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # 128², int16, slope 1, intercept −1024, bundled
SERIES = TEST_FILES / "dicomdirtests" / "77654033" / "CT2"  # four 16² CT slices with window 30/100


def window(hu, center, width):
    return np.clip((hu - (center - width / 2)) / width * 2 - 1, -1, 1)


def pil_resize(a: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))


@pytest.fixture
def ct_folder(tmp_path):
    shutil.copy(CT_SMALL, tmp_path / "ct.dcm")
    return tmp_path


def test_bundled_files_are_local():
    assert CT_SMALL.is_file() and len(list(SERIES.iterdir())) == 4


def test_dicom_hounsfield_and_window_at_native_size(ct_folder):
    """Catches a missing intercept (everything shifts by 1024 HU: saturated), a swapped window or
    a lost 16-bit range."""
    raw = pydicom.dcmread(CT_SMALL)
    hu = raw.pixel_array.astype(np.float64) * float(raw.RescaleSlope) + float(raw.RescaleIntercept)
    ds = DicomFolder(str(ct_folder), size=128, window_center=40.0, window_width=400.0)
    assert len(ds) == 1
    x = ds[0]
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    np.testing.assert_array_equal(ds.hounsfield(0)[0], hu)
    np.testing.assert_allclose(x[0].numpy(), window(hu, 40.0, 400.0), atol=1e-6)
    assert -1 < x.mean() < 1 and (x > -1).any() and (x < 1).any()  # neither all air nor saturated
    wide = DicomFolder(str(ct_folder), size=128, window_center=0.0, window_width=4000.0)[0]
    np.testing.assert_allclose(wide[0].numpy(), window(hu, 0.0, 4000.0), atol=1e-6)


def test_dicom_resampled_to_training_size(ct_folder):
    raw = pydicom.dcmread(CT_SMALL)
    hu = raw.pixel_array.astype(np.float64) - 1024.0
    x = DicomFolder(str(ct_folder), size=48)[0]
    assert x.shape == (1, 48, 48)
    np.testing.assert_allclose(x[0].numpy(), window(pil_resize(hu, 48), 40.0, 400.0), atol=2e-3)


def test_dicom_anisotropic_pixels_give_a_square_physical_crop(tmp_path):
    """Rows 0.5 mm apart, columns 1 mm: the 128×128 slice is 64 mm × 128 mm; the largest centred
    square keeps all rows and the middle 64 columns (catches cropping in pixels, not millimetres)."""
    raw = pydicom.dcmread(CT_SMALL)
    raw.PixelSpacing = [0.5, 1.0]
    raw.save_as(tmp_path / "aniso.dcm")
    hu = raw.pixel_array.astype(np.float64) - 1024.0
    x = DicomFolder(str(tmp_path), size=32)[0]
    np.testing.assert_allclose(x[0].numpy(), window(pil_resize(hu[:, 32:96], 32), 40.0, 400.0), atol=2e-3)


def test_dicom_series_sorted_with_its_own_window(tmp_path):
    for f in SERIES.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(TEST_FILES / "dicomdirtests" / "DICOMDIR", tmp_path / "DICOMDIR")  # index file: ignored
    ds = DicomFolder(str(tmp_path), size=16, window_center=None, window_width=None)
    assert [p.name for p, _ in ds.items] == sorted(f.name for f in SERIES.iterdir())
    for i, (p, _) in enumerate(ds.items):
        ref = pydicom.dcmread(p)
        assert (float(ref.WindowCenter), float(ref.WindowWidth)) == (30.0, 100.0)
        hu = ref.pixel_array * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
        np.testing.assert_allclose(ds[i][0].numpy(), window(hu, 30.0, 100.0), atol=1e-6)


def test_dicom_multiframe_gives_one_item_per_frame(tmp_path):
    raw = pydicom.dcmread(CT_SMALL)
    frames = np.stack([raw.pixel_array + 100 * k for k in range(3)]).astype(raw.pixel_array.dtype)
    raw.NumberOfFrames = 3
    raw.PixelData = frames.tobytes()
    raw.save_as(tmp_path / "multi.dcm")
    ds = DicomFolder(str(tmp_path), size=128, window_center=0.0, window_width=4000.0)
    assert len(ds) == 3
    for k in range(3):
        np.testing.assert_array_equal(ds.hounsfield(k)[0], frames[k] - 1024.0)


def one_line_error(cls, match, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as err:
        src = cls(*args, **kwargs)
        src[0]
    assert "\n" not in str(err.value)
    return str(err.value)


def test_dicom_bad_input_is_one_clear_error(tmp_path, ct_folder):
    assert str(tmp_path / "nowhere") in one_line_error(DicomFolder, "does not exist", str(tmp_path / "nowhere"))
    assert "not a folder" in one_line_error(DicomFolder, "not a folder", str(ct_folder / "ct.dcm"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in one_line_error(DicomFolder, "no files", str(empty))
    (ct_folder / "notes.txt").write_text("not DICOM")
    assert "notes.txt" in one_line_error(DicomFolder, "not a DICOM file", str(ct_folder))
    no_image = tmp_path / "noimage"
    no_image.mkdir()
    shutil.copy(TEST_FILES / "dicomdirtests" / "TINY_ALPHA" / "PT000000" / "ST000000" / "SE000000" / "IM000000", no_image / "a")
    assert "holds no image" in one_line_error(DicomFolder, "no image", str(no_image))
    only_ct = tmp_path / "only_ct"
    only_ct.mkdir()
    shutil.copy(CT_SMALL, only_ct / "ct.dcm")
    one_line_error(DicomFolder, "WindowCenter", str(only_ct), window_center=None, window_width=None)
    one_line_error(DicomFolder, "window_width", str(only_ct), window_width=0.0)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    shutil.copy(TEST_FILES / "SC_rgb_rle_2frame.dcm", rgb / "rgb.dcm")
    assert "rgb.dcm" in one_line_error(DicomFolder, "greyscale", str(rgb))


# ------------------------------------------------------------------------------ 16-bit slices
def test_16bit_png_and_tiff_keep_their_depth(tmp_path):
    """Stored values one apart (1000, 1001) and far above 255 (40000) stay distinct and exact: an
    8-bit conversion would merge them."""
    import tifffile

    stored = np.array([[1000, 1001, 1002, 1003], [40000, 40001, 0, 65535], [1024, 1064, 1124, 1224], [900, 1100, 800, 3000]],
                      dtype=np.uint16)
    Image.fromarray(stored).save(tmp_path / "a.png")
    Image.fromarray(stored).save(tmp_path / "b.tif")
    signed = (stored.astype(np.int64) - 1024).clip(-32768, 32767).astype(np.int16)
    tifffile.imwrite(tmp_path / "c.tiff", signed)
    (tmp_path / "readme.txt").write_text("ignored: not a slice extension")
    narrow = SliceFolder(str(tmp_path), size=4, window_center=-22.5, window_width=4.0)
    assert [p.name for p in narrow.paths] == ["a.png", "b.tif", "c.tiff"]
    for i in range(2):
        np.testing.assert_array_equal(narrow.stored(i), stored.astype(np.int64))
        np.testing.assert_allclose(narrow[i][0].numpy(), window(stored - 1024.0, -22.5, 4.0), atol=1e-6)
        assert len(set(narrow[i][0, 0].tolist())) == 4  # 1000..1003 → four grey levels
    # the signed TIFF holds HU directly: intercept 0
    hu = SliceFolder(str(tmp_path), size=4, window_center=0.0, window_width=2000.0, rescale_intercept=0.0)
    np.testing.assert_array_equal(hu.stored(2), signed.astype(np.int64))
    np.testing.assert_allclose(hu[2][0].numpy(), window(signed.astype(np.float64), 0.0, 2000.0), atol=1e-6)
    resized = SliceFolder(str(tmp_path), size=2)[0]
    np.testing.assert_allclose(resized[0].numpy(), window(pil_resize(stored - 1024.0, 2), 40.0, 400.0), atol=2e-3)


def test_slices_bad_input_is_one_clear_error(tmp_path):
    assert str(tmp_path / "nowhere") in one_line_error(SliceFolder, "does not exist", str(tmp_path / "nowhere"))
    (tmp_path / "x.txt").write_text("no slices here")
    one_line_error(SliceFolder, "no .png/.tif/.tiff files", str(tmp_path))
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "eight.png")
    assert "eight.png" in one_line_error(SliceFolder, "not a 16-bit", str(tmp_path))
    (tmp_path / "eight.png").unlink()
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    assert "broken.tif" in one_line_error(SliceFolder, "cannot read", str(tmp_path))
