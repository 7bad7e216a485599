"""The request bodies `bertkit serve` accepts, as strict pydantic models: wrong types are 422, never coerced ("3" and
true are not the integer 3), unknown fields are 422, and every limit (--max_question_chars, --max_context_chars,
--max_batch_questions, top_k within n_best_size) is in the schema, so /openapi.json documents it.

`request_models(engine, cfg, kind)` gives the one object the routes use: `validate(body)`, `errors(exc)`,
`to_items(validated)` (what the engine's `prepare` takes), `shape(validated, results)` (the response body).
"""

# No `from __future__ import annotations`: pydantic reads the annotations of the classes defined below at run time.
from typing import Annotated

from bertkit.serve.guard import MAX_INT


class RequestModels:
    """Validation and shaping of one route's bodies: one object, or a list of 1..max objects."""

    def __init__(self, item, name: str, max_items: int, to_item, shape_one):
        from pydantic import Field, TypeAdapter

        self.one = TypeAdapter(item)
        self.many = TypeAdapter(Annotated[list[item], Field(min_length=1, max_length=max_items)])
        self.name, self.to_item, self.shape_one = name, to_item, shape_one
        ref = {"$ref": f"#/components/schemas/{name}"}
        schema = {"anyOf": [ref, {"type": "array", "items": ref, "minItems": 1, "maxItems": max_items}]}
        self.openapi_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    def validate(self, body) -> tuple[list, bool]:
        """(the validated items, whether the body was one item); pydantic's ValidationError otherwise."""
        if isinstance(body, list):
            return self.many.validate_python(body), False
        return [self.one.validate_python(body)], True

    @staticmethod
    def errors(exc) -> list[dict]:
        """Pydantic's errors without the offending input (a context can be megabytes) or internals."""
        return [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]

    def to_items(self, validated: tuple[list, bool]) -> list:
        return [self.to_item(x) for x in validated[0]]

    def shape(self, validated: tuple[list, bool], results: list):
        out = [self.shape_one(x, r) for x, r in zip(validated[0], results, strict=True)]
        return out[0] if validated[1] else out

    def install_openapi(self, app) -> None:
        """List the request schema in /openapi.json (FastAPI lists only the models it sees in signatures)."""

        def openapi() -> dict:
            if app.openapi_schema is None:
                from fastapi.openapi.utils import get_openapi

                schema = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
                defs = self.one.json_schema(ref_template="#/components/schemas/{model}")
                components = schema.setdefault("components", {}).setdefault("schemas", {})
                components.update(defs.pop("$defs", {}))
                components[self.name] = defs
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = openapi


def request_models(engine, cfg, kind: str) -> RequestModels:
    """The body models of the route a model of `kind` ("qa" or "classify") serves, with cfg's limits."""
    from pydantic import BaseModel, ConfigDict, Field

    strict = ConfigDict(extra="forbid", strict=True)
    if kind == "qa":
        from bertkit.serve.qa import Query

        class AnswerRequest(BaseModel):
            model_config = strict
            id: Annotated[
                Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)] | Annotated[str, Field(max_length=256)] | None,
                Field(description="echoed back with the answers"),
            ] = None
            question: Annotated[str, Field(min_length=1, max_length=cfg.max_question_chars)]
            context: Annotated[str, Field(min_length=1, max_length=cfg.max_context_chars)]
            top_k: Annotated[int, Field(ge=1, le=engine.n_best_size, description="answers, best first")] = 1
            max_answer_length: Annotated[int, Field(ge=1, le=engine.max_seq_length, description="in tokens")] = 30

        return RequestModels(
            AnswerRequest, "AnswerRequest", cfg.max_batch_questions,
            lambda r: Query(r.question, r.context, r.top_k, r.max_answer_length),
            lambda r, answers: {"id": r.id, "answers": [a.to_dict() for a in answers]},
        )  # fmt: skip

    Text = Annotated[str, Field(max_length=cfg.max_context_chars)]

    class TextInput(BaseModel):
        """As transformers' text-classification pipeline takes it: a text and, for pair tasks, its text_pair."""

        model_config = strict
        text: Text
        text_pair: Text | None = None

    return RequestModels(
        TextInput | Text, "TextInput", cfg.max_batch_questions,
        lambda x: (x, None) if isinstance(x, str) else (x.text, x.text_pair),
        lambda x, prediction: prediction.to_dict(),
    )  # fmt: skip
