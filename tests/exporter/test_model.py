import pytest

torch = pytest.importorskip("torch")

from gap_deploy.exporter.model import REFERENCE_KEYS, GapCNN  # noqa: E402


def test_layer_names_match_the_classic_training_code():
    keys = set(GapCNN().state_dict())
    assert keys == set(REFERENCE_KEYS)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (2, 3, 37, 53), (1, 3, 224, 224), (3, 3, 5, 300)])
def test_logits_shape_is_independent_of_image_size(shape):
    model = GapCNN(num_classes=7).eval()
    assert model(torch.randn(shape)).shape == (shape[0], 7)


def test_below_four_pixels_is_rejected_by_pytorch_itself():
    with pytest.raises(RuntimeError):
        GapCNN().eval()(torch.randn(1, 3, 3, 3))


def test_in_channels_and_num_classes_are_configurable():
    model = GapCNN(in_channels=1, num_classes=2)
    assert model.conv1[0].in_channels == 1 and model.fcn.out_features == 2
