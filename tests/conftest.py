import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random-weight models in the real formats (pack, authors' files, DINOv2 folder, SD VAE)."""
    from imagpose.testing import make_models

    root = tmp_path_factory.mktemp("models")
    paths = make_models(root)
    return root, paths


@pytest.fixture(scope="session")
def comfy_nodes(tiny_models, tmp_path_factory):
    """ComfyUI's `nodes` module, imported in this process with the pack loaded as a custom node."""
    from harness.inprocess import load

    root, _ = tiny_models
    return load(tmp_path_factory.mktemp("custom_nodes"), root)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a module's tests (on a shared 2-core machine two threads ran 10x slower)."""
    from trainer.testing import one_intraop_thread

    with one_intraop_thread():
        yield
