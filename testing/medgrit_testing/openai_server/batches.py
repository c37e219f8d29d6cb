"""The files and batch endpoints: ``/v1/files`` and ``/v1/batches``.

``POST /v1/files`` (multipart: ``file`` and ``purpose``), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``. A batch answers its JSONL lines in
the background (outside the online rate limits) after ``batch_delay_s``; ``batch_fail_rate`` of
its lines fail with status 500 (error file) and ``batch_expire`` ends it ``expired`` after half
its lines: those are in the output and error files, the rest are missing. Each line is answered
as the same request online would be (:meth:`.state.ProviderState.answer`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .answers import estimate_prompt_tokens
from .responses import error_response, json_response, unauthorized
from .state import ProviderState

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    data: dict
    lines: list[dict]
    cancel: asyncio.Event


class FilesAndBatches:
    """The stored files and batches of a server, and their endpoints.

    Args:
        state: the server's state (configuration, ids, counters, answers).
    """

    def __init__(self, state: ProviderState) -> None:
        self.state = state
        self.files: dict[str, dict] = {}
        self.file_data: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self._tasks: set[asyncio.Task] = set()

    def store_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = self.state.new_id("file-")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.files[file_id] = meta
        self.file_data[file_id] = data
        return meta

    async def create_file(self, request: Request) -> Response:
        """``POST /v1/files`` (multipart: ``file`` and ``purpose``)."""
        self.state.hit("files_create")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            message = "Expected a multipart/form-data body with a boundary."
            return error_response(400, message, "invalid_request_error", None)
        try:
            async with request.form() as form:
                upload, purpose = form.get("file"), form.get("purpose")
                if upload is None or purpose is None:
                    message = "Both 'file' and 'purpose' are required."
                    return error_response(400, message, "invalid_request_error", None)
                filename, data = await _field_bytes(upload)
                purpose_bytes = (await _field_bytes(purpose))[1]
        except HTTPException as exc:  # a malformed body, as Starlette's form parser words it
            return error_response(400, exc.detail, "invalid_request_error", None)
        meta = self.store_file(data, filename or "upload.jsonl", purpose_bytes.decode())
        return json_response(meta)

    def _file_or_404(self, request: Request) -> str | Response:
        file_id = request.path_params["file_id"]
        if file_id not in self.files:
            return error_response(
                404, f"No such File object: {file_id}", "invalid_request_error", "not_found"
            )
        return file_id

    async def retrieve_file(self, request: Request) -> Response:
        """``GET /v1/files/{file_id}``."""
        self.state.hit("files_retrieve")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        found = self._file_or_404(request)
        return found if isinstance(found, Response) else json_response(self.files[found])

    async def file_content(self, request: Request) -> Response:
        """``GET /v1/files/{file_id}/content``."""
        self.state.hit("files_content")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        found = self._file_or_404(request)
        if isinstance(found, Response):
            return found
        return Response(self.file_data[found], media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        """``DELETE /v1/files/{file_id}``."""
        self.state.hit("files_delete")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        found = self._file_or_404(request)
        if isinstance(found, Response):
            return found
        del self.files[found], self.file_data[found]
        return json_response({"id": found, "object": "file", "deleted": True})

    # -- batches --------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        """``POST /v1/batches``: validates the input file and starts answering it."""
        self.state.hit("batches_create")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        try:
            params = json.loads(await request.body())
        except ValueError:
            return error_response(400, "The body is not valid JSON.", "invalid_request_error", None)
        file_id = params.get("input_file_id")
        if file_id not in self.files:
            return error_response(
                400, f"No such File object: {file_id}", "invalid_request_error", "invalid_file"
            )
        if params.get("endpoint") != "/v1/chat/completions":
            return error_response(
                400,
                "Only /v1/chat/completions batches are supported.",
                "invalid_request_error",
                "invalid_endpoint",
            )
        now = int(time.time())
        batch_id = self.state.new_id("batch_")
        data = {
            "id": batch_id,
            "object": "batch",
            "endpoint": params["endpoint"],
            "errors": None,
            "input_file_id": file_id,
            "completion_window": str(params.get("completion_window", "24h")),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": params.get("metadata"),
        }
        lines, errors = parse_batch_input(self.file_data[file_id])
        if errors:
            data.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
        else:
            data["request_counts"]["total"] = len(lines)
        batch = _Batch(data, lines, asyncio.Event())
        self.batches[batch_id] = batch
        if not errors:
            task = asyncio.create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return json_response(data)

    async def retrieve_batch(self, request: Request) -> Response:
        """``GET /v1/batches/{batch_id}``."""
        self.state.hit("batches_retrieve")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return error_response(404, "No such batch.", "invalid_request_error", "not_found")
        return json_response(batch.data)

    async def cancel_batch(self, request: Request) -> Response:
        """``POST /v1/batches/{batch_id}/cancel``: ``cancelling``, then ``cancelled``."""
        self.state.hit("batches_cancel")
        if not self.state.authorized(request.headers):
            return unauthorized(self.state)
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return error_response(404, "No such batch.", "invalid_request_error", "not_found")
        if batch.data["status"] in ("validating", "in_progress", "finalizing"):
            batch.data.update(status="cancelling", cancelling_at=int(time.time()))
            batch.cancel.set()
        return json_response(batch.data)

    async def _run_batch(self, batch: _Batch) -> None:
        try:
            await self._process_batch(batch)
        except Exception:  # a server bug: fail the batch visibly instead of hanging it
            log.exception("batch %s failed", batch.data["id"])
            error = {"code": "server_error", "line": None, "message": "internal error"}
            batch.data.update(
                status="failed",
                failed_at=int(time.time()),
                errors={"object": "list", "data": [error]},
            )

    async def _process_batch(self, batch: _Batch) -> None:
        data = batch.data
        data.update(status="in_progress", in_progress_at=int(time.time()))
        if self.state.config.batch_delay_s > 0:
            try:
                await asyncio.wait_for(batch.cancel.wait(), self.state.config.batch_delay_s)
            except TimeoutError:
                pass
        lines = batch.lines
        stop = len(lines) // 2 if self.state.config.batch_expire else len(lines)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        counts = data["request_counts"]
        for i, line in enumerate(lines[:stop]):
            if batch.cancel.is_set():
                break
            if i % 50 == 49:
                await asyncio.sleep(0)  # let online requests through
            record = self._answer_line(line)
            ok = record["response"]["status_code"] == 200
            (outputs if ok else errors).append(json.dumps(record, ensure_ascii=False).encode())
            counts["completed" if ok else "failed"] += 1
        data.update(status="finalizing", finalizing_at=int(time.time()))
        if outputs:
            name = f"{data['id']}_output.jsonl"
            meta = self.store_file(b"\n".join(outputs) + b"\n", name, "batch_output")
            data["output_file_id"] = meta["id"]
        if errors:
            name = f"{data['id']}_error.jsonl"
            meta = self.store_file(b"\n".join(errors) + b"\n", name, "batch_output")
            data["error_file_id"] = meta["id"]
        now = int(time.time())
        if batch.cancel.is_set():
            data.update(status="cancelled", cancelled_at=now)
        elif self.state.config.batch_expire:
            data.update(status="expired", expired_at=now)
            self.state.count("batch_lines_expired", len(lines) - stop)
        else:
            data.update(status="completed", completed_at=now)

    def _answer_line(self, line: dict) -> dict:
        self.state.count("batch_lines")
        request_id = self.state.new_id("req_")
        record = {
            "id": self.state.new_id("batch_req_"),
            "custom_id": line["custom_id"],
            "error": None,
        }
        if self.state.rng.random() < self.state.config.batch_fail_rate:
            self.state.count("batch_lines_failed")
            body = {
                "error": {
                    "message": "The server had an error (injected batch fault).",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            record["response"] = {"status_code": 500, "request_id": request_id, "body": body}
            return record
        body = line["body"]
        outcome = self.state.answer(body, estimate_prompt_tokens(body.get("messages") or []))
        if outcome.status == 200:
            self.state.count("batch_lines_completed")
            self.state.record_answer(outcome, body)
        else:
            self.state.count("batch_lines_failed")
        record["response"] = {
            "status_code": outcome.status,
            "request_id": request_id,
            "body": outcome.body,
        }
        return record


def parse_batch_input(data: bytes) -> tuple[list[dict], list[dict]]:
    """Lines of a batch input file, and OpenAI-style validation errors."""
    lines: list[dict] = []
    errors: list[dict] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(
                {
                    "code": "invalid_json_line",
                    "line": number,
                    "message": "This line is not parseable as valid JSON.",
                }
            )
            continue
        problem = None
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            problem = ("missing_custom_id", "Each line needs a string custom_id.")
        elif line["custom_id"] in seen:
            problem = ("duplicate_custom_id", f"custom_id {line['custom_id']!r} repeats.")
        elif line.get("url") != "/v1/chat/completions" or line.get("method", "POST") != "POST":
            problem = ("invalid_url", "The url must be /v1/chat/completions with POST.")
        elif not isinstance(line.get("body"), dict):
            problem = ("missing_body", "Each line needs a body object.")
        if problem:
            errors.append({"code": problem[0], "line": number, "message": problem[1]})
            continue
        seen.add(line["custom_id"])
        lines.append(line)
    if not lines and not errors:
        errors.append({"code": "empty_file", "line": None, "message": "The file has no lines."})
    return lines, errors


async def _field_bytes(value: UploadFile | str) -> tuple[str | None, bytes]:
    """(file name or None, bytes) of a form field: an uploaded file or a plain value."""
    if isinstance(value, UploadFile):
        return value.filename, await value.read()
    return None, value.encode()
