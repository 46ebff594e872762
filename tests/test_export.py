"""Export-time pruning and int8 quantisation (the paper's Table 8 add-ons): the files load without mapscale."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import LSTMRegressor, SmallCNN
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from mapscale.cli import app
from mapscale.export import prunable_weights, prune_magnitude, quantization_report, quantize_dynamic_int8, save_torchscript
from mapscale.targets import small_mnist_cnn

# Grey 28x28 images in two class folders: a run trains in about a second (the shipped MNIST takes ~5 s to parse).
TINY = '''"""A tiny recipe for the export tests."""
from mapscale.recipe import DataSection, MappingMethod, OptimSection, OutputSection, Recipe, TargetSection


class Tiny(Recipe):
    target = TargetSection(name="small_mnist_cnn", args={{"classes": 2}})
    mapping = MappingMethod(grouping="lwt", budget=64)
    data = DataSection(name="imagefolder", path="{folder}", channels=1, image_size=28, test_size=4)
    optim = OptimSection(lr=5e-2, max_steps=2, batch_size=8)
    output = OutputSection(root="{root}", run_name="tiny", log_every=1, progress=False)
'''


def zeros(tensor: torch.Tensor) -> float:
    return (tensor == 0).sum().item() / tensor.numel()


@pytest.mark.parametrize("factory", [small_mnist_cnn, SmallCNN, LSTMRegressor])
def test_pruning_zeroes_90_percent_of_each_weight_and_keeps_the_rest(factory, seeded):
    model = seeded(factory)
    state = model.state_dict()
    names = prunable_weights(model)
    pruned, report = prune_magnitude(state, 0.9, include=names)
    assert set(report.tensors) == set(names) and names
    for name, tensor in pruned.items():
        if name in names:
            assert zeros(tensor) >= 0.9, name
            kept = tensor[tensor != 0].abs()
            assert kept.min() >= state[name].abs().flatten().kthvalue(math.ceil(0.9 * tensor.numel())).values  # the largest survive
        else:  # biases, BatchNorm scale/shift and running statistics
            assert torch.equal(tensor, state[name]), name
    assert report.sparsity(report.pruned) >= 0.9 > report.sparsity(report.all)
    # Loads into a freshly built plain module: no generator, no MappedModel.
    fresh = seeded(factory, seed=1)
    fresh.load_state_dict(pruned, strict=True)


def test_pruning_defaults_to_weight_matrices_and_checks_the_amount():
    state = SmallCNN().state_dict()
    _, report = prune_magnitude(state, 0.5)
    assert set(report.tensors) == {"conv1.weight", "conv2.weight", "fc.weight"}  # bn1.weight is 1-D: kept
    assert report.kinds.keys() == {"conv", "linear"}
    unchanged, _ = prune_magnitude(state, 0.0)
    assert all(torch.equal(unchanged[n], state[n]) for n in state)
    for amount in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
            prune_magnitude(state, amount)
    with pytest.raises(ValueError, match="not in the state"):
        prune_magnitude(state, 0.5, include=["fc.weigth"])


def test_int8_quantises_linear_layers_keeps_convolutions_and_traces_what_does_not_script(tmp_path, seeded):
    model = seeded(small_mnist_cnn).eval()
    quantized = quantize_dynamic_int8(model)
    report = quantization_report(model, quantized)
    assert report.quantized == ["7", "9"] and report.float_kept == ["0", "3"]
    assert report.bytes_after < report.bytes_before
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (quantized(x) - model(x)).abs().max() < 0.1

    class Unscriptable(nn.Module):  # **kwargs in forward is beyond TorchScript
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, **options):
            return self.fc(x)

    with pytest.raises(ValueError, match="does not script"):
        save_torchscript(quantize_dynamic_int8(Unscriptable()), tmp_path / "u.pt")
    assert save_torchscript(quantize_dynamic_int8(Unscriptable()), tmp_path / "u.pt", lambda: torch.zeros(1, 4)) == "trace"
    with pytest.raises(ValueError, match="safetensors"):
        save_torchscript(quantized, tmp_path / "q.safetensors")


# Run in a fresh interpreter that never imports mapscale: the TorchScript file alone must suffice.
LOAD_ALONE = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import torch
    program = torch.jit.load(sys.argv[1])
    torch.save(program(torch.load(sys.argv[2])), sys.argv[3])
    kinds = {name: module.original_name for name, module in program.named_modules()}
    assert kinds["7._packed_params"] == kinds["9._packed_params"] == "LinearPackedParams", kinds
    assert "_packed_params" not in " ".join(n for n in kinds if n.startswith(("0", "3"))), kinds
    assert not any(name.startswith("mapscale") for name in sys.modules)
    """
)


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    recipe = root / "tiny.py"
    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (root / "frames" / label).mkdir(parents=True)
        for i in range(8):
            pixels = (torch.rand(28, 28, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "frames" / label / f"{i}.png")
    recipe.write_text(TINY.format(root=root / "runs", folder=root / "frames"))
    code, output = invoke("train", recipe)
    assert code == 0, output
    return root / "runs" / "tiny"


def test_cli_prunes_then_quantises_a_tiny_run_and_the_files_run_without_mapscale(tiny_run, tmp_path):
    pruned_file = tmp_path / "pruned.safetensors"
    code, output = invoke("export", tiny_run, "--out", pruned_file, "--prune", "0.9")
    assert code == 0, output
    assert "pruned 90% of each of 4 weights" in output and "conv" in output and "linear" in output
    state = load_file(str(pruned_file))
    plain = small_mnist_cnn(classes=2).eval()
    plain.load_state_dict(state, strict=True)
    for name in ("0.weight", "3.weight", "7.weight", "9.weight"):
        assert zeros(state[name]) >= 0.9, name
    assert all(zeros(state[f"{i}.bias"]) < 0.5 for i in (0, 3, 7, 9))

    program_file = tmp_path / "model.pt"
    code, output = invoke("export", tiny_run, "--out", program_file, "--prune", "0.9", "--quantize", "int8")
    assert code == 0, output
    assert "quantised to int8 (dynamic): 7, 9" in output and "kept float32 (no dynamic int8 kernel): 0, 3" in output
    assert "torchscript (script)" in output
    x = torch.randn(5, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, str(program_file), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True, cwd=tmp_path, timeout=60,
    )
    with torch.no_grad():
        expected = plain(x)
    assert (torch.load(tmp_path / "y.pt") - expected).abs().max() < 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune", "1.0"], "outside [0, 1)"),
        (["--prune", "0.5", "--quantize", "int8", "--out", "{tmp}/m.safetensors"], "give --out a .pt file"),
        (["--quantize", "int4", "--out", "{tmp}/m.pt"], "unknown quantisation 'int4'"),
    ],
)
def test_cli_export_errors_exit_2(args, message, tmp_path):
    # Checked before the run is read: a missing run directory still gets the argument's error.
    code, output = invoke("export", tmp_path / "no_run", *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in output, output
