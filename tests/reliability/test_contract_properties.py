"""Property tests: the hook's validation and the emulator's (written independently) agree.

Any request the hook accepts the emulator accepts; any the hook rejects the emulator rejects
too, and the hook's error names the offending field. Both read the same contract
(``shared/seeds``), so a disagreement is a bug in one of them.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_imagegen.emulator.validation import RequestValidationError, validate_request
from airflow_provider_imagegen.exceptions import ImageGenValidationError
from airflow_provider_imagegen.models import SIZES, ImageGenerationRequest

odd_values = st.none() | st.booleans() | st.floats(allow_nan=False, width=32) | st.text(max_size=8)
fields = {
    "n": st.integers(-2, 12) | odd_values,
    "size": st.sampled_from(SIZES) | st.sampled_from(["1024X1024", "512x512", ""]) | odd_values,
    "quality": st.sampled_from(["low", "medium", "high", "ultra", "High"]) | odd_values,
    "background": st.sampled_from(["opaque", "auto", "transparent"]) | odd_values,
    "moderation": st.sampled_from(["low", "auto", "high"]) | odd_values,
    "output_format": st.sampled_from(["png", "jpeg", "webp", "jpg"]) | odd_values,
    "output_compression": st.integers(-3, 103) | odd_values,
}
prompts = st.text(max_size=40) | st.just("x" * 32_000) | st.just("x" * 32_001) | odd_values
params = st.fixed_dictionaries({}, optional=fields)


def _emulator_accepts(body: dict) -> bool:
    try:
        validate_request(body)
    except RequestValidationError:
        return False
    return True


@settings(max_examples=250, deadline=None)
@given(prompt=prompts, params=params)
def test_hook_and_emulator_agree_on_every_request(prompt, params):
    # None means "not sent" to the hook (its defaults); the JSON body then omits the field too
    sent = {name: value for name, value in params.items() if value is not None}
    rejection: ImageGenValidationError | None = None
    try:
        request = ImageGenerationRequest.build(prompt, **sent)
    except ImageGenValidationError as error:
        rejection = error
    if rejection is not None:
        assert not _emulator_accepts({"prompt": prompt, **sent}), f"hook rejected, emulator accepted: {rejection}"
        assert rejection.field in str(rejection)
        assert rejection.field == "prompt" or rejection.field in sent
        return
    assert _emulator_accepts(request.to_json()), f"hook accepted {request.to_json()}, emulator rejected it"
