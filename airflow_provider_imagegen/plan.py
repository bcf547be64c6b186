"""The plan of one task try: rendered operator values → validated requests, keys and upload arguments.

Pure functions and frozen values, no I/O: every check of the operator's arguments happens here,
before anything is paid for or written, and can be tested without Airflow, S3 or the API.

Layout under a prefix (default ``imagegen/{dag_id}/{run_id}/{task_id}[/{map_index}]``)::

    {prefix}/00.png ... 09.png   the images, in the order the API returned them
    {prefix}/manifest.json       written last (see ``records``)
    {prefix}/_pending.json       until the try ends (see ``records``)

With ``prompts=[...]`` each prompt gets ``{prefix}/{prompt_index:03d}/`` with the same layout.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from airflow_provider_imagegen.exceptions import ImageGenValidationError
from airflow_provider_imagegen.models import REQUEST_PARAMETERS, ImageGenerationRequest, prompt_digest

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
DEFAULT_MAX_IMAGES = 100
"""The spending guard's default: the most images (prompts x ``n``) one task instance may ask for."""
# the longest name put under a prompt's prefix: "/_pending.json" (images are "/NN.png")
_LONGEST_NAME = "/_pending.json"
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "OUTPOSTS",
        "GLACIER_IR",
        "SNOW",
        "EXPRESS_ONEZONE",
    }
)
CANNED_ACLS = frozenset(
    {
        "private",
        "public-read",
        "public-read-write",
        "authenticated-read",
        "aws-exec-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
    }
)
# characters of Airflow's own run ids (``manual__2026-01-01T00:00:00+00:00``) that are replaced
# readably; any other replaced character adds a digest of the original so that names stay distinct
_TIMESTAMP_CHARS = frozenset(":+")

TEMPLATED_ARGUMENTS: tuple[str, ...] = (
    *("prompt", "prompts", "s3_bucket", "s3_key_prefix", *REQUEST_PARAMETERS),
    *("kms_key_id", "s3_tags", "s3_extra_args"),
)
"""The operator's templated arguments (its ``template_fields``): rendered before a plan is built."""
PLAN_ARGUMENTS: tuple[str, ...] = (
    *TEMPLATED_ARGUMENTS,
    *("min_images", "max_images", "encrypt", "acl_policy"),
)
"""Every operator argument a plan is built from (:func:`plan_from`), rendered or not."""


@dataclass(frozen=True)
class TaskIdentity:
    """Which task instance (and try) the plan is for: what the default prefix, metadata and manifest name."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int | None = None

    @classmethod
    def from_context(cls, context: Any) -> TaskIdentity:
        """Read the ids from an Airflow task context (``ti`` and ``run_id``).

        :param context: the task's context.
        """
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return cls(
            dag_id=ti.dag_id,
            run_id=context["run_id"],
            task_id=ti.task_id,
            map_index=-1 if map_index is None else map_index,
            try_number=getattr(ti, "try_number", None),
        )

    def record(self, prompt_index: int) -> dict[str, Any]:
        """What a manifest says of the task that wrote it."""
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "try_number": self.try_number,
            "prompt_index": prompt_index,
        }


@dataclass(frozen=True)
class PromptJob:
    """One prompt of a task: its validated request and where its images go."""

    prompt_index: int
    request: ImageGenerationRequest
    prefix: str

    def image_key(self, index: int) -> str:
        """``{prefix}/{index:02d}.{png|jpg}``."""
        return image_key(self.prefix, index, self.request.file_extension)


@dataclass(frozen=True)
class Plan:
    """Everything one try will do, decided before any call.

    :param jobs: one per prompt, in prompt order.
    :param bucket: the destination bucket.
    :param batch: ``prompts=[...]`` (each job under its own ``/{i:03d}`` folder).
    :param min_images: fewest images per prompt that count as success.
    :param upload_args: ``PutObject`` arguments of every object (encryption, ACL, tags, extras).
    :param task: the task instance.
    :param shared_prefix: the prefix is the user's ``s3_key_prefix`` (not the per-task default).
    """

    jobs: tuple[PromptJob, ...]
    bucket: str
    batch: bool
    min_images: int
    upload_args: dict[str, Any] = field(default_factory=dict)
    task: TaskIdentity = field(default_factory=lambda: TaskIdentity("", "", ""))
    shared_prefix: bool = False  # an explicit s3_key_prefix: other tasks may write there too

    @property
    def list_prefix(self) -> str:
        """The prefix whose one LIST finds every record of this task's jobs."""
        return self.jobs[0].prefix.rpartition("/")[0] if self.batch else self.jobs[0].prefix

    def object_metadata(self, job: PromptJob) -> dict[str, str]:
        """S3 metadata of every image of ``job`` (printable ASCII)."""
        return {
            "dag-id": metadata_value(self.task.dag_id),
            "run-id": metadata_value(self.task.run_id),
            "task-id": metadata_value(self.task.task_id),
            "prompt-sha256": prompt_digest(job.request.prompt),
            "size": job.request.size,
            "quality": job.request.quality,
        }


def build_plan(
    *,
    task: TaskIdentity,
    prompt: Any,
    prompts: Any,
    s3_bucket: Any,
    s3_key_prefix: Any,
    request_params: dict[str, Any],
    min_images: Any,
    max_images: Any = DEFAULT_MAX_IMAGES,
    encrypt: bool = False,
    kms_key_id: Any = None,
    acl_policy: Any = None,
    s3_tags: Any = None,
    s3_extra_args: Any = None,
) -> Plan:
    """Validate the rendered values and lay out one job per prompt; raise before anything is paid.

    :param task: the task instance.
    :param prompt: the single prompt, or None in batch mode.
    :param prompts: the prompts (a list, or a list rendered as text), or None.
    :param s3_bucket: the destination bucket.
    :param s3_key_prefix: the user's prefix, or None for the default one.
    :param request_params: ``n``, ``size``, ``quality``... as rendered (numbers may be strings).
    :param min_images: fewest images per prompt that count as success.
    :param max_images: the spending guard: the most images (prompts x n) one task may ask for; None: no cap.
    :param encrypt: SSE-S3 (AES256).
    :param kms_key_id: SSE-KMS with this key.
    :param acl_policy: a canned ACL.
    :param s3_tags: object tags.
    :param s3_extra_args: further ``PutObject`` arguments.
    """
    params = dict(request_params)
    for name in ("n", "output_compression"):
        if name in params:
            params[name] = as_int(name, params[name])
    texts = [prompt] if prompts is None else rendered_prompts(prompts)
    requests = [ImageGenerationRequest(prompt=text, **params) for text in texts]
    check_min_images(min_images, requests[0].n)
    check_max_images(max_images, len(requests), requests[0].n)
    check_bucket_name(s3_bucket)
    check_extra_args(s3_extra_args)
    check_object_settings(kms_key_id=kms_key_id, acl_policy=acl_policy, s3_tags=s3_tags, extra=s3_extra_args)
    prefix = task_prefix(s3_key_prefix, task)
    check_key_length(prefix, batch=prompts is not None)
    if prompts is None:
        jobs: tuple[PromptJob, ...] = (PromptJob(0, requests[0], prefix),)
    else:
        jobs = tuple(PromptJob(i, request, f"{prefix}/{i:03d}") for i, request in enumerate(requests))
    return Plan(
        jobs=jobs,
        bucket=s3_bucket,
        batch=prompts is not None,
        min_images=min_images,
        upload_args=upload_args(
            s3_extra_args, encrypt=encrypt, kms_key_id=kms_key_id, acl_policy=acl_policy, s3_tags=s3_tags
        ),
        task=task,
        shared_prefix=bool(isinstance(s3_key_prefix, str) and s3_key_prefix.strip().strip("/")),
    )


def plan_from(values: Any, task: TaskIdentity) -> Plan:
    """:func:`build_plan` from the operator's arguments by name: the one way a worker and the
    triggerer turn a task's values into a plan.

    :param values: a mapping holding every name of :data:`PLAN_ARGUMENTS`, templated ones rendered.
    :param task: the task instance.
    """
    return build_plan(
        task=task,
        prompt=values["prompt"],
        prompts=values["prompts"],
        s3_bucket=values["s3_bucket"],
        s3_key_prefix=values["s3_key_prefix"],
        request_params={name: values[name] for name in REQUEST_PARAMETERS},
        min_images=values["min_images"],
        max_images=values["max_images"],
        encrypt=values["encrypt"],
        kms_key_id=values["kms_key_id"],
        acl_policy=values["acl_policy"],
        s3_tags=values["s3_tags"],
        s3_extra_args=values["s3_extra_args"],
    )


# -- checks ---------------------------------------------------------------------------------------


def as_int(name: str, value: Any) -> Any:
    """Template rendering yields strings: ``"3"`` → 3; anything else is left for validation to judge."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return value


def parse_list(text: str) -> Any:
    """A list rendered as text: JSON (``["a", "b"]``) or a Python literal (``['a', 'b']``)."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise ImageGenValidationError("prompts", text, "a list of prompt strings")


def rendered_prompts(prompts: Any) -> list[Any]:
    """The prompts of batch mode as a non-empty list (each is validated as a request)."""
    if isinstance(prompts, str):  # e.g. a list rendered by Jinja as a string
        prompts = parse_list(prompts)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ImageGenValidationError("prompts", prompts, "a non-empty list of prompt strings")
    return list(prompts)


def check_min_images(min_images: Any, n: int) -> None:
    """``min_images`` is an integer from 1 to ``n``."""
    if isinstance(min_images, bool) or not isinstance(min_images, int) or not 1 <= min_images <= n:
        raise ImageGenValidationError("min_images", min_images, f"an integer from 1 to n ({n})")


def check_max_images(max_images: Any, prompts: int, n: int) -> None:
    """The spending guard: ``prompts x n`` images at most (``None`` disables it)."""
    if max_images is None:
        return
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ImageGenValidationError("max_images", max_images, "a positive integer, or None for no cap")
    if prompts * n > max_images:
        raise ImageGenValidationError(
            "max_images",
            max_images,
            f"at least {prompts} prompt(s) x n={n} = {prompts * n} images; nothing was generated "
            "(raise max_images, or set it to None, if this many images is intended)",
        )


def check_bucket_name(bucket: Any) -> None:
    """A bare bucket name S3 accepts: 3-63 of ``a-z 0-9 . -``, no ``s3://``, no key, not an IP address."""
    if not isinstance(bucket, str) or not bucket.strip() or bucket != bucket.strip():
        raise ImageGenValidationError("s3_bucket", bucket, "a bucket name")
    if "/" in bucket or bucket.startswith("s3:"):
        raise ImageGenValidationError(
            "s3_bucket", bucket, "a bare bucket name (no s3:// and no key; use s3_key_prefix for the key)"
        )
    if not _BUCKET.match(bucket) or ".." in bucket or _IP_LIKE.match(bucket):
        raise ImageGenValidationError(
            "s3_bucket", bucket, "3 to 63 lowercase letters, digits, dots and hyphens, not an IP address"
        )


def check_object_settings(*, kms_key_id: Any, acl_policy: Any, s3_tags: Any, extra: Any) -> None:
    """Values S3 would refuse only after the images were paid for: storage class, ACL, tags, KMS key."""
    if kms_key_id is not None and (not isinstance(kms_key_id, str) or not kms_key_id.strip()):
        raise ImageGenValidationError("kms_key_id", kms_key_id, "a KMS key id, ARN or alias (a string)")
    if acl_policy is not None and acl_policy not in CANNED_ACLS:
        raise ImageGenValidationError("acl_policy", acl_policy, "one of " + ", ".join(sorted(CANNED_ACLS)))
    if s3_tags is not None:
        if not isinstance(s3_tags, dict) or len(s3_tags) > 10:
            raise ImageGenValidationError("s3_tags", s3_tags, "a mapping of at most 10 tags")
        for key, value in s3_tags.items():
            if not isinstance(key, str) or not isinstance(value, str) or not 1 <= len(key) <= 128 or len(value) > 256:
                raise ImageGenValidationError(
                    "s3_tags", {key: value}, "string keys of 1-128 and string values of 0-256 characters"
                )
    storage_class = (extra or {}).get("StorageClass") if isinstance(extra, dict) else None
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise ImageGenValidationError(
            "s3_extra_args",
            {"StorageClass": storage_class},
            "a StorageClass among " + ", ".join(sorted(STORAGE_CLASSES)),
        )


def check_key_length(prefix: str, *, batch: bool) -> None:
    """Every key under ``prefix`` (batch: ``/NNN`` more) stays within S3's 1024 bytes."""
    longest = prefix + ("/000" if batch else "") + _LONGEST_NAME
    if len(longest.encode("utf-8")) > MAX_KEY_BYTES:
        raise ImageGenValidationError(
            "s3_key_prefix", prefix, f"a prefix short enough for {longest[len(prefix) :]!r} to fit in 1024 bytes"
        )


def check_extra_args(extra: Any) -> None:
    """Refuse ExtraArgs S3 would reject after the images were paid for, and checksums (ours to set)."""
    if extra is None:
        return
    from boto3.s3.transfer import S3Transfer  # a constant; boto3 is loaded by the S3 hook anyway

    allowed = sorted(name for name in S3Transfer.ALLOWED_UPLOAD_ARGS if not name.startswith(("Checksum", "Mpu")))
    if not isinstance(extra, dict):
        raise ImageGenValidationError("s3_extra_args", extra, "a dict of S3 upload arguments")
    unknown = sorted(str(key) for key in extra if key not in allowed)
    if unknown:
        raise ImageGenValidationError(
            "s3_extra_args", unknown, "keys among " + ", ".join(allowed) + " (checksums are set by the operator)"
        )


def upload_args(
    extra: dict[str, Any] | None,
    *,
    encrypt: bool = False,
    kms_key_id: str | None = None,
    acl_policy: str | None = None,
    s3_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``PutObject`` arguments of every object: the extras, then encryption, ACL and tags.

    :param extra: the user's ``s3_extra_args``.
    :param encrypt: SSE-S3 (AES256).
    :param kms_key_id: SSE-KMS with this key (wins over ``encrypt``).
    :param acl_policy: a canned ACL.
    :param s3_tags: object tags, sent URL-encoded.
    """
    args: dict[str, Any] = dict(extra or {})
    if kms_key_id:
        args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_id)
    elif encrypt:
        args["ServerSideEncryption"] = "AES256"
    if acl_policy:
        args["ACL"] = acl_policy
    if s3_tags:
        args["Tagging"] = urlencode(s3_tags)
    return args


def metadata_value(value: Any) -> str:
    """S3 metadata is printable ASCII: keep such text as is, percent-encode anything else."""
    return "".join(char if 32 <= ord(char) < 127 else quote(char) for char in str(value))


# -- layout ---------------------------------------------------------------------------------------


def task_prefix(s3_key_prefix: Any, task: TaskIdentity) -> str:
    """The user's prefix (slashes trimmed) or the default one; ``/{map_index}`` for mapped tasks.

    :param s3_key_prefix: the rendered ``s3_key_prefix`` (None or blank for the default).
    :param task: the task instance.
    """
    if s3_key_prefix is not None and not isinstance(s3_key_prefix, str):
        raise ImageGenValidationError("s3_key_prefix", s3_key_prefix, "a string")
    prefix = (s3_key_prefix or "").strip().strip("/")
    segments = prefix.split("/")
    if prefix and (
        any(segment in ("", ".", "..") for segment in segments)
        or any(ord(char) < 32 or ord(char) == 127 for char in prefix)
    ):
        raise ImageGenValidationError(
            "s3_key_prefix", s3_key_prefix, "a key prefix without empty, '.' or '..' segments or control characters"
        )
    if not prefix:
        return default_prefix(task.dag_id, task.run_id, task.task_id, task.map_index)
    return f"{prefix}/{task.map_index}" if task.map_index >= 0 else prefix


def safe_segment(value: str) -> str:
    """A string as one S3-friendly path segment, made only of ``[A-Za-z0-9._=-]``.

    ``manual__2026-01-01T00:00:00+00:00`` → ``manual__2026-01-01T00-00-00-00-00``. When other
    characters had to go (spaces, slashes, non-ASCII letters...), an 8-character digest of the
    original is appended, so that ``"ünïcode"`` and ``"anicode"`` never share a prefix.

    :param value: any string (a dag, run or task id).
    """
    value = str(value)
    cleaned = _UNSAFE.sub("-", value).strip("-.")
    lossy = any(_UNSAFE.match(char) and char not in _TIMESTAMP_CHARS for char in value)
    if not cleaned or lossy:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}" if cleaned else digest
    return cleaned


def default_prefix(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """``imagegen/{dag_id}/{run_id}/{task_id}`` (S3-safe), plus ``/{map_index}`` for mapped tasks.

    :param dag_id: the DAG id.
    :param run_id: the DAG run id (made S3-safe).
    :param task_id: the task id.
    :param map_index: the map index; None or negative for an unmapped task.
    """
    parts = ["imagegen", safe_segment(dag_id), safe_segment(run_id), safe_segment(task_id)]
    if map_index is not None and map_index >= 0:
        parts.append(str(map_index))
    return "/".join(parts)


def image_key(prefix: str, index: int, extension: str) -> str:
    """``{prefix}/{index:02d}.{png|jpg}``."""
    return f"{prefix}/{index:02d}.{extension}"
