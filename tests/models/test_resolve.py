import pytest

from tuneforge.errors import ModelError
from tuneforge.models import resolve as resolve_module
from tuneforge.models.generate import stop_token_ids
from tuneforge.models.load import load_for_inference
from tuneforge.models.resolve import resolve


def test_local_directory_resolves(tiny_model):
    assert resolve(str(tiny_model)) == tiny_model.resolve()


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        resolve(str(tmp_path))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve(str(tmp_path / "nope"))


def test_unknown_embedded_model_lists_known_ones():
    with pytest.raises(ModelError, match="known: embedded:smollm2-135m-instruct"):
        resolve("embedded:gpt-5")


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(resolve_module, "hub_reachable", lambda endpoint, timeout_s=3.0: False)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache, and the hub cannot be reached"):
        resolve("some-org/some-model-that-is-not-cached")


def test_stop_tokens_include_the_end_of_turn(tiny_model, chatml_tokenizer):
    model, tokenizer = load_for_inference(str(tiny_model))
    assert chatml_tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tokenizer)


def test_fake_gguf_import_error_is_clear(tmp_path):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelError, match="broken.gguf: cannot import"):
        resolve(str(fake))
