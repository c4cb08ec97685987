"""The published constants of the protocols, pinned to their literal values.

A test that reads a constant on both sides of its assertion cannot fail when the constant changes;
here every value is written out from its published source, and where a constant reaches the data
(the normalisation of a loaded data set, the views of the cache), the value that arrives is checked.
"""

from __future__ import annotations

import numpy as np
import torch

from conftest import write_tiny_cifar
from rld.data import arrays, crop_views, folder, sources, strong, views
from rld.losses import newer, sdd
from rld.methods import LS_TEMPERATURE, LS_WEIGHT


def test_cifar100_normalisation_and_crop():
    # mdistiller/dataset/cifar100.py (and RepDistiller dataset/cifar100.py): RandomCrop(32, padding=4),
    # RandomHorizontalFlip(), Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert arrays.CIFAR100_MEAN == (0.5071, 0.4867, 0.4408)
    assert arrays.CIFAR100_STD == (0.2675, 0.2565, 0.2761)
    assert views.PAD == 4
    # 9 x 9 crop offsets (0..8 with padding 4) x 2 flips; the un-augmented view: offsets (4, 4), no flip
    assert (views.OFFSETS, views.NUM_VIEWS, views.CENTER_VIEW) == (9, 162, 80)
    dy, dx, flip = views.decode_views(torch.tensor([0, 1, 80, 161]))
    assert (dy.tolist(), dx.tolist(), flip.tolist()) == ([0, 0, 4, 8], [0, 0, 4, 8], [0, 1, 0, 1])
    assert len(arrays.CIFAR100_CLASSES) == 100
    assert arrays.CIFAR100_CLASSES[:3] == ["apple", "aquarium_fish", "baby"] and arrays.CIFAR100_CLASSES[-1] == "worm"


def test_a_loaded_cifar100_set_carries_the_published_statistics(tmp_path):
    data = arrays.load_cifar100(write_tiny_cifar(tmp_path / "tiny.npz"))
    assert (data.mean, data.std, data.flip) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), True)


def test_imagenet_normalisation_and_crops():
    # torchvision's ImageNet statistics (the reference training scripts, every ImageNet distiller)
    assert sources.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert sources.IMAGENET_STD == (0.229, 0.224, 0.225)
    # RandomResizedCrop(224) with torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3), 10 attempts;
    # evaluation: Resize(256), CenterCrop(224)
    assert (folder.IMAGE_SIZE, folder.RESIZE_SIZE, sources.IMAGE_SIZE_DEFAULT) == (224, 256, 224)
    assert crop_views.SCALE == (0.08, 1.0)
    assert crop_views.RATIO == (0.75, 4 / 3)
    assert crop_views.ATTEMPTS == 10 and crop_views.DRAWS == 23  # 2 per attempt, top, left, flip


def test_imagenet_evaluation_transform_normalises_with_the_published_statistics():
    from PIL import Image

    transform = sources.image_transform(train=False, image_size=224)
    image = Image.fromarray(np.full((300, 260, 3), 255, dtype=np.uint8))  # white: every pixel 1.0
    out = transform(image)
    assert out.shape == (3, 224, 224)
    want = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[:, 100, 100], want)
    # Resize(256) of the shorter side, then CenterCrop(224): a 300 x 260 image keeps a 224 x 224 centre
    ramp = np.zeros((300, 260, 3), dtype=np.uint8)
    ramp[:, :, 0] = np.arange(260, dtype=np.uint8)[None, :]
    small = sources.image_transform(train=False, image_size=112)(Image.fromarray(ramp))
    assert small.shape == (3, 112, 112)


def test_strong_augmentation_of_mlkd_and_crld():
    # Jin-Ying/Multi-Level-Logit-Distillation mdistiller/dataset/cifar100.py: RandAugment(2, 10) over
    # augment_list() (the FixMatch list, in this order and with these ranges), then Cutout of side
    # U(0, 0.5) x width filled with (125, 123, 114)
    assert strong.OPS == (
        ("auto_contrast", 0.0, 1.0),
        ("brightness", 0.05, 0.95),
        ("color", 0.05, 0.95),
        ("contrast", 0.05, 0.95),
        ("equalize", 0.0, 1.0),
        ("identity", 0.0, 1.0),
        ("posterize", 4.0, 8.0),
        ("rotate", -30.0, 30.0),
        ("sharpness", 0.05, 0.95),
        ("shear_x", -0.3, 0.3),
        ("shear_y", -0.3, 0.3),
        ("solarize", 0.0, 256.0),
        ("translate_x", -0.3, 0.3),
        ("translate_y", -0.3, 0.3),
    )
    assert (strong.NUM_OPS, strong.CUTOUT_MAX, strong.CUTOUT_FILL) == (2, 0.5, (125.0, 123.0, 114.0))
    assert strong.STRONG_STREAM == crop_views.STRONG_STREAM == 1 and crop_views.TRAIN_STREAM == 0


def test_loss_constants_of_the_newer_methods():
    # MLKD KD_ours.py: the temperatures T, 3, 5 on the strong view and 2, 6 on the weak one; the 50th
    # percentile of the teacher's confidences
    assert newer.MLKD_STRONG_VIEW_TEMPERATURES == (3.0, 5.0)
    assert newer.MLKD_WEAK_VIEW_TEMPERATURES == (2.0, 6.0)
    assert newer.MLKD_PERCENTILE == 50.0
    # CRLD cfg.py: TAU_W 0.9, TAU_S 0.2
    assert (newer.CRLD_TAU_W, newer.CRLD_TAU_S) == (0.9, 0.2)
    # SDD-CVPR2024 train.py:184 --M [1,2,4]; KD.py:89-90 the weight 2 of a disagreeing region
    assert (sdd.SDD_SCALES, sdd.SDD_COMPLEMENTARY_WEIGHT) == ((1, 2, 4), 2.0)
    # logit standardization (sunshangquan/logit-standardization-KD): base temperature 2, weight 9
    assert (LS_TEMPERATURE, LS_WEIGHT) == (2.0, 9.0)
