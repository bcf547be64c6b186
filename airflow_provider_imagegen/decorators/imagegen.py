"""``@task.imagegen``: a TaskFlow function returns the prompt(s); ImageGenToS3Operator does the rest.

Registered in provider info under ``task-decorators``, so ``from airflow.sdk import task`` then
``@task.imagegen(s3_bucket=...)`` works in any DAG file once the provider is installed::

    @task.imagegen(s3_bucket="my-content-bucket", n=2, size="1536x1024")
    def banner(topic: str) -> str:
        return f"A banner about {topic} for {{{{ ds }}}}"  # rendered with Jinja, like `prompt`

A returned string is one prompt; a returned list is batch mode (the operator's ``prompts``). Every
``ImageGenToS3Operator`` argument is accepted except ``prompt``/``prompts`` themselves; XCom,
retries, deferrable mode and ``.expand()`` over the function's arguments behave as with the operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator
from airflow_provider_imagegen.version_compat import set_during_execution

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

_PROMPT_KWARG = "imagegen_prompt"
_PROMPTS_KWARG = "imagegen_prompts"


class _ImageGenDecoratedOperator(DecoratedOperator, ImageGenToS3Operator):
    """Runs the decorated function for the prompt (a ``str``) or prompts (a ``list[str]``), then the operator.

    The returned value is rendered as a Jinja template in the task's context, exactly as the
    operator's ``prompt``/``prompts`` are (a ``.j2``/``.jinja2`` name loads that template file).
    When the task defers, the rendered prompt(s) travel with the deferral (``next_kwargs``), so the
    function is not called again when the task resumes (except under ``dag.test()``, which drops them).

    :param python_callable: the decorated function; it returns the prompt or a list of prompts.
    :param op_args: positional arguments of the function (templated).
    :param op_kwargs: keyword arguments of the function (templated).
    """

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *ImageGenToS3Operator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **ImageGenToS3Operator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.imagegen"
    overwrite_rtif_after_execution: bool = True  # the UI's Rendered Template shows the real prompt
    can_start_from_trigger: ClassVar[bool] = False  # the prompt comes from the function, run on a worker

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("prompt", "prompts"):
            if name in kwargs:
                raise TypeError(f"@task.imagegen does not take `{name}`: the decorated function returns the prompt(s)")
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            prompt=set_during_execution(),
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        """Call the function, render what it returned as the prompt(s), then run the operator."""
        self._prompts_from_function(context)
        return super().execute(context)

    def _prompts_from_function(self, context: Context) -> None:
        from airflow_provider_imagegen.version_compat import context_merge, determine_kwargs

        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        self._set_prompts(self.python_callable(*self.op_args, **kwargs))
        if self.prompts is None:
            self.prompt = self.render_template(self.prompt, context)
        else:
            self.prompts = self.render_template(self.prompts, context)

    def _set_prompts(self, value: Any) -> None:
        if isinstance(value, str):
            if not value.strip():
                raise TypeError("The @task.imagegen function returned an empty prompt")
            self.prompt, self.prompts = value, None
        elif isinstance(value, (list, tuple)):
            if not value or not all(isinstance(item, str) and item.strip() for item in value):
                raise TypeError("The @task.imagegen function must return a non-empty list of non-empty prompt strings")
            self.prompt, self.prompts = None, list(value)
        else:
            raise TypeError(
                f"The @task.imagegen function must return a prompt (str) or prompts (list of str), "
                f"not {type(value).__name__}"
            )

    def defer(self, *, trigger: Any, method_name: str, kwargs: dict[str, Any] | None = None, **rest: Any) -> Any:
        """Defer as the operator does, carrying the rendered prompt(s) to the resumed task."""
        carried = {_PROMPT_KWARG: self.prompt, _PROMPTS_KWARG: self.prompts}
        return super().defer(trigger=trigger, method_name=method_name, kwargs={**(kwargs or {}), **carried}, **rest)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Restore the prompt(s) the function returned before the task deferred, then resume.

        Airflow keeps the deferral's kwargs for the resumed task; ``dag.test()`` (Airflow 3.3) does
        not, and there the function is called again for its prompt(s).
        """
        next_kwargs = dict(next_kwargs or {})
        if _PROMPT_KWARG in next_kwargs or _PROMPTS_KWARG in next_kwargs:
            self.prompt = next_kwargs.pop(_PROMPT_KWARG, None)
            self.prompts = next_kwargs.pop(_PROMPTS_KWARG, None)
        elif "event" in next_kwargs:
            self.log.warning("The deferral did not keep the prompt(s): calling the function again for them")
            self._prompts_from_function(context)
        return super().resume_execution(next_method, next_kwargs, context)


def imagegen_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Turn a function returning the prompt (``str``) or prompts (``list[str]``) into an ImageGenToS3Operator.

    Used as ``@task.imagegen(s3_bucket=..., n=..., ...)``; takes every ImageGenToS3Operator argument
    except ``prompt`` and ``prompts``, and every BaseOperator argument.

    :param python_callable: the function to decorate (set when used without parentheses).
    :param kwargs: ImageGenToS3Operator and BaseOperator arguments.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_ImageGenDecoratedOperator,
        **kwargs,
    )
