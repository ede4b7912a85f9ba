from PIL import Image

from selfsup.cli.inspect import main as inspect_main


def test_inspect_writes_a_captioned_png_of_the_rotated_inputs(tiny_folder, tmp_path):
    out = tmp_path / "rotation.png"
    assert inspect_main(["--task", "rotation", "--data", str(tiny_folder), "--count", "3", "--out", str(out)]) == 0
    image = Image.open(out)
    # 3 images x 4 rotations, 4 a row: 3 rows of 128 px cells plus captions
    assert image.width >= 4 * 128 and image.height >= 3 * 128
