"""ImageReviewOperator: a person looks at the generated images in Airflow's UI and picks the ones to keep.

Built on Airflow's own human-in-the-loop support (``apache-airflow-providers-standard``'s
:class:`~airflow.providers.standard.operators.hitl.HITLOperator`, Airflow ≥ 3.1): the request
appears under *Browse → Required Actions* with a Markdown body that shows every image (thumbnail,
prompt, pixel size, bytes, sha256, S3 URI). The reviewer ticks the images to keep, or *Reject all*.
The task holds no worker slot while it waits.

The browser fetches the thumbnails through the provider's plugin on the API server
(``/imagegen/images/...``), under Airflow's authentication: the body holds no credentials and no
presigned URLs, so nothing in Airflow's database grants access to the images, and the bucket stays
private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

from airflow_provider_imagegen.gallery import describe, image_entries, image_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

REJECT_ALL = "Reject all"
_MARKDOWN_SPECIAL = "\\`*_{}[]()<>#+-.!|~"


class ImageReviewOperator(HITLOperator):
    """Ask a person which generated images to keep; return only their XCom entries.

    ``images`` is the generating task's XCom (``images=generate.output``): one dict per image as
    ``ImageGenToS3Operator`` and ``@task.imagegen`` return them (lists of such lists from a mapped
    task are flattened). Each image becomes an option, "Image 1", "Image 2", ...; the reviewer may
    choose several. The task returns the chosen images' dicts in their original order, ready for
    ``.expand()`` downstream. Choosing "Reject all" (alone or with images) or nothing skips this task,
    and with it the tasks downstream that need its success.

    :param images: the images to review, e.g. ``generate.output`` (templated).
    :param subject: the headline of the request (templated).
    :param body: Markdown shown above the images (templated).
    :param image_base_url: the API server's URL the browser reaches, prepended to the image links;
        default ``[api] base_url``, or relative links when that is unset.
    :param aws_conn_id: the AWS connection that reads the images' manifests (for their prompts).
    :param kwargs: further HITLOperator arguments (``response_timeout``, ``notifiers``,
        ``assigned_users``, ...) and BaseOperator arguments.
    """

    template_fields: Sequence[str] = ("subject", "body", "images")
    template_fields_renderers = {"body": "md", "images": "json"}
    ui_color = "#fdf2d0"

    def __init__(
        self,
        *,
        images: Any,
        subject: str = "Which generated images should be kept?",
        body: str | None = None,
        image_base_url: str | None = None,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        for fixed in ("options", "multiple", "defaults"):
            if fixed in kwargs:
                raise ValueError(f"ImageReviewOperator sets `{fixed}` itself (one option per image)")
        # The real options (one per image) are only known at run time; HITLOperator wants some now.
        super().__init__(subject=subject, body=body, options=[REJECT_ALL], multiple=True, **kwargs)
        self.images = images
        self.image_base_url = image_base_url
        self.aws_conn_id = aws_conn_id

    # -- the images and the options -------------------------------------------------------------

    def review_images(self) -> list[dict[str, Any]]:
        """The rendered ``images`` as one flat list of image dicts."""
        value = self.images
        if not isinstance(value, (list, tuple, dict)):
            value = list(value)  # a lazy XCom sequence (from a mapped upstream)
        return image_entries(value)

    @staticmethod
    def option_label(number: int) -> str:
        """The option that keeps image ``number`` (1-based), e.g. ``Image 1``.

        :param number: the image's position in the review, from 1.
        """
        return f"Image {number}"

    def _set_options(self, images: list[dict[str, Any]]) -> None:
        self.options = [self.option_label(number) for number in range(1, len(images) + 1)] + [REJECT_ALL]

    def _s3_client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()

    def _base_url(self) -> str:
        if self.image_base_url is not None:
            return self.image_base_url.rstrip("/")
        from airflow_provider_imagegen.version_compat import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/")

    def review_body(self, context: Context, images: list[dict[str, Any]]) -> str:
        """The Markdown the reviewer reads: the author's ``body``, then a section per image.

        :param context: the task's context (the DAG and run the image links name).
        :param images: the images under review.
        """
        ti = context["ti"]
        views = {view.key: view for view in describe(self._s3_client(), images)}
        base = self._base_url()
        sections = [self.body] if self.body else []
        sections.append(
            f"{len(images)} image(s) to review. Tick the ones to keep, or **{REJECT_ALL}**. "
            "Click a thumbnail for the full-size image."
        )
        for number, image in enumerate(images, start=1):
            view = views[image["key"]]
            thumb = image_url(ti.dag_id, ti.run_id, image["key"], thumbnail=True, base=base)
            full = image_url(ti.dag_id, ti.run_id, image["key"], base=base)
            pixels = f"{view.width}x{view.height} px, " if view.width and view.height else ""
            sections.append(
                f"### {self.option_label(number)}\n\n"
                f"[![{self.option_label(number)}]({thumb})]({full})\n\n"
                f"**Prompt:** {_markdown_text(view.prompt or '(no manifest found)')}  \n"
                f"**Size:** {pixels}{view.size_bytes / 1e6:.2f} MB  \n"
                f"**sha256:** `{view.sha256}`  \n"
                f"**S3:** `{view.s3_uri}`"
            )
        return "\n\n".join(sections)

    # -- HITLOperator ---------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        """Write the review request (one option per image) and wait for the reviewer."""
        images = self.review_images()
        if not images:
            from airflow_provider_imagegen.version_compat import AirflowSkipException

            raise AirflowSkipException("No images to review")
        self._set_options(images)
        self.body = self.review_body(context, images)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the chosen images' XCom entries; skip on "Reject all" or no choice.

        :param context: the task's context.
        :param event: the reviewer's response, from Airflow.
        """
        images = self.review_images()
        self._set_options(images)  # the same options as when the request was written
        response = super().execute_complete(context, event)
        chosen = set(response["chosen_options"])
        if REJECT_ALL in chosen or not chosen:
            from airflow_provider_imagegen.version_compat import AirflowSkipException

            raise AirflowSkipException(f"The reviewer rejected all {len(images)} image(s)")
        kept = [image for number, image in enumerate(images, start=1) if self.option_label(number) in chosen]
        self.log.info(
            "The reviewer kept %d of %d image(s): %s", len(kept), len(images), ", ".join(i["key"] for i in kept)
        )
        return kept


def _markdown_text(text: str) -> str:
    """``text`` with Markdown's special characters escaped and line breaks kept, for one paragraph."""
    escaped = "".join(f"\\{char}" if char in _MARKDOWN_SPECIAL else char for char in text)
    return escaped.replace("\r", "").replace("\n", "  \n")
