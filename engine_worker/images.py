"""Images on the engine's side: which token the model's chat template writes for an image (told to the
frontends in each Welcome), and an ADD's prompt with its images as vLLM takes it, whose processor for
the model expands each such token into the model's own placeholder tokens."""
import io

from PIL import Image

from common.messages import Add


def image_token_id(engine) -> int | None:
    """The model's image token (its config's image_token_id, or LLaVA's image_token_index); None when
    the model takes no images."""
    model_config = getattr(engine, "model_config", None)
    if model_config is None or not getattr(model_config, "is_multimodal_model", False):
        return None
    hf_config = model_config.hf_config
    for name in ("image_token_id", "image_token_index"):
        token = getattr(hf_config, name, None)
        if isinstance(token, int):
            return token
    return None


def prompt_of(add: Add) -> dict:
    """vLLM's prompt: the token ids, and the images decoded (admission's thread: never the step loop's).
    The frontend checked each decodes within its limits before sending it."""
    prompt = {"prompt_token_ids": add.prompt_token_ids}
    if add.images:
        prompt["multi_modal_data"] = {"image": [decoded(data) for data in add.images]}
    return prompt


def decoded(data: bytes):
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")  # as vLLM's own image loader gives images to the processor
