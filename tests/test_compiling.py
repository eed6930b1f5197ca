"""torch.compile with an eager fallback (adm.runtime), in sampling and training."""
import warnings

import pytest
import torch

from adm.diffusion import DiffusionConfig
from adm.errors import ConfigError
from adm.guided import ADM_G
from adm.nn import ADM, ADM_classifier, ADMConfig, ClassifierConfig
from adm.runtime import CompiledWithFallback, compile_with_fallback
from helpers import randomized

DIFF = DiffusionConfig(steps=50, noise_schedule="cosine", learn_sigma=True)
NET = dict(image_size=8, model_channels=32, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2))


def no_compiler(gm, example_inputs):
    """A backend that fails as inductor does where no C++ compiler / Triton exists."""
    raise RuntimeError("no working C++ compiler found")


@pytest.fixture(scope="module")
def nets():
    torch._dynamo.reset()
    model = randomized(ADM(ADMConfig(**NET, num_classes=3, diffusion=DIFF)), 0)
    clf = randomized(ADM_classifier(ClassifierConfig(**NET, num_classes=3, num_head_channels=32, diffusion=DIFF)), 1)
    return model, clf


def test_a_failing_compiler_falls_back_to_eager_once_with_one_warning(nets):
    model, _ = nets
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 40]), torch.tensor([0, 2])
    wrapped = CompiledWithFallback(model, backend=no_compiler)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no working C\\+\\+ compiler.*eagerly"):
        out = wrapped(x, t, y)
    assert not wrapped.is_compiled
    torch.testing.assert_close(out, model(x, t, y), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later calls are eager and silent
        torch.testing.assert_close(wrapped(x, t, y), model(x, t, y), rtol=0, atol=0)
    assert wrapped.config is model.config  # attributes are the module's


def test_the_callers_own_error_is_raised_not_hidden_as_a_compiler_failure(nets):
    model, _ = nets
    wrapped = CompiledWithFallback(model, backend=no_compiler)
    with pytest.raises(ConfigError, match="label"):
        wrapped(torch.randn(2, 3, 8, 8), torch.tensor([3, 40]), torch.tensor([0, 7]))  # class 7 of 3
    assert wrapped.is_compiled  # not blamed on the compiler


def test_compile_with_fallback_disabled_is_the_module_itself(nets):
    model, _ = nets
    assert compile_with_fallback(model, enabled=False) is model


def test_compiled_guided_sampling_equals_eager(nets):
    model, clf = nets
    labels = torch.tensor([0, 1, 2])
    eager = ADM_G(model, clf, scale=2.0).sample(labels, steps=4, sampler="ddim", seed=5)
    traced = ADM_G(model, clf, scale=2.0, compile="aot_eager")  # traced forward and backward, no C++ compiler
    torch.testing.assert_close(traced.sample(labels, steps=4, sampler="ddim", seed=5), eager, rtol=1e-4, atol=1e-5)
    assert all(w.is_compiled for w in traced._compiled.values()) and len(traced._compiled) == 2


def test_guided_sampling_with_a_failing_compiler_still_samples(nets):
    model, clf = nets
    labels = torch.tensor([0, 1])
    eager = ADM_G(model, clf, scale=1.0).sample(labels, steps=3, sampler="ddpm", seed=1)
    broken = ADM_G(model, clf, scale=1.0, compile=no_compiler)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = broken.sample(labels, steps=3, sampler="ddpm", seed=1)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
