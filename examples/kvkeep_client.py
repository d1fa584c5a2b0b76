"""kvkeep_client: a standard-library-only client for kvkeepd (docs/protocol.md).

kvkeepd speaks newline-delimited JSON over a Unix stream socket. This module is the
protocol's executable form: one method per verb, a synchronous ``Client`` and an asyncio
``AsyncClient`` with the same methods, streaming, and typed errors.

    from kvkeep_client import Client, NotFound

    with Client() as c:                      # default socket, see default_socket_path()
        sid = c.open_session(system="You are a careful agent.")
        c.append(sid, [{"role": "user", "content": "List the files."}])
        r = c.generate(sid, max_tokens=32)
        print(r.text, r.usage["cached_tokens"])
        for ev in c.stream(sid, max_tokens=32):
            if ev.event == "token":
                print(ev.text, end="", flush=True)
            else:                            # the last item: a GenerateResult
                print(ev.usage)

Both clients multiplex any number of requests over one connection: every request gets a
fresh integer id, and a reader (a thread, or an asyncio task) routes each reply line to
the request with that id. The synchronous client may be shared between threads.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = [
    "AlreadyExists", "AsyncClient", "AsyncStream", "BadJson", "Busy", "Cancelled", "Client",
    "ConnectionClosed", "GenerateResult", "Internal", "InvalidArgument", "KvkeepError",
    "LineTooLong", "NotFound", "PermissionDenied", "PROTOCOL_VERSION", "ResourceExhausted",
    "Stream", "TokenEvent", "TooDeep", "TooManyRequests", "TooManySessions", "Unavailable",
    "UnknownVerb", "default_socket_path",
]

PROTOCOL_VERSION = 1

# Reply lines can be as long as a session.info of a long conversation.
_MAX_REPLY_LINE_BYTES = 256 << 20


# ---- errors ---------------------------------------------------------------------------


class KvkeepError(Exception):
    """An error reply ({"error": {"code", "message"}}) or a failed connection.

    ``code`` is the stable wire code of docs/protocol.md ("not_found", ...); each code has
    a subclass, so callers can ``except NotFound``.
    """

    code = "unknown"

    def __init__(self, message: str, code: Optional[str] = None, request_id: Any = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadJson(KvkeepError):
    code = "bad_json"


class LineTooLong(KvkeepError):
    code = "line_too_long"


class TooDeep(KvkeepError):
    code = "too_deep"


class UnknownVerb(KvkeepError):
    code = "unknown_verb"


class InvalidArgument(KvkeepError):
    code = "invalid_argument"


class NotFound(KvkeepError):
    code = "not_found"


class AlreadyExists(KvkeepError):
    code = "already_exists"


class Busy(KvkeepError):
    code = "busy"


class TooManySessions(KvkeepError):
    code = "too_many_sessions"


class TooManyRequests(KvkeepError):
    code = "too_many_requests"


class ResourceExhausted(KvkeepError):
    code = "resource_exhausted"


class PermissionDenied(KvkeepError):
    code = "permission_denied"


class Cancelled(KvkeepError):
    code = "cancelled"


class Unavailable(KvkeepError):
    code = "unavailable"


class Internal(KvkeepError):
    code = "internal"


class ConnectionClosed(KvkeepError):
    """The connection ended (or could not be made) before the reply arrived. Client-side;
    not a wire code."""

    code = "connection_closed"


_ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (BadJson, LineTooLong, TooDeep, UnknownVerb, InvalidArgument, NotFound,
                AlreadyExists, Busy, TooManySessions, TooManyRequests, ResourceExhausted,
                PermissionDenied, Cancelled, Unavailable, Internal)
}


def _error_from_reply(reply: Dict[str, Any]) -> KvkeepError:
    err = reply.get("error") or {}
    code = str(err.get("code", "unknown"))
    cls = _ERRORS_BY_CODE.get(code, KvkeepError)
    return cls(str(err.get("message", "")), code=code, request_id=reply.get("id"))


# ---- results --------------------------------------------------------------------------


@dataclass
class GenerateResult:
    """The result of session.generate, and the last item a stream yields."""

    session: str
    text: str
    tokens: List[int]
    finish_reason: str
    usage: Dict[str, Any]
    num_messages: int = 0
    num_tokens: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    event: str = field(default="done", init=False)

    @classmethod
    def from_result(cls, result: Dict[str, Any]) -> "GenerateResult":
        return cls(session=result.get("session", ""), text=result.get("text", ""),
                   tokens=list(result.get("tokens", [])),
                   finish_reason=result.get("finish_reason", ""),
                   usage=dict(result.get("usage", {})),
                   num_messages=result.get("num_messages", 0),
                   num_tokens=result.get("num_tokens", 0), raw=result)


@dataclass
class TokenEvent:
    """One generated token of a streaming generate. ``text`` may be "" while a multi-byte
    character is incomplete."""

    token: int
    text: str
    event: str = field(default="token", init=False)


StreamItem = Union[TokenEvent, GenerateResult]
Messages = Union[str, Dict[str, Any], Sequence[Dict[str, Any]]]


# ---- request building (shared by both clients) ----------------------------------------


def default_socket_path() -> str:
    """$KVKEEP_SOCKET; else the first existing of $XDG_RUNTIME_DIR/kvkeep.sock (a user's
    daemon), /run/kvkeep/kvkeep.sock (the system service) and /tmp/kvkeep-$UID.sock (a
    daemon without XDG_RUNTIME_DIR); else the system path."""
    explicit = os.environ.get("KVKEEP_SOCKET")
    if explicit:
        return explicit
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(os.path.join(runtime, "kvkeep.sock"))
    candidates += ["/run/kvkeep/kvkeep.sock", f"/tmp/kvkeep-{os.getuid()}.sock"]
    for path in candidates:
        if os.path.exists(path):
            return path
    return "/run/kvkeep/kvkeep.sock"


def _messages(messages: Messages) -> List[Dict[str, Any]]:
    """A list of message objects; a bare string is one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, dict):
        return [messages]
    return list(messages)


def _drop_none(**params: Any) -> Dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _generate_params(session: str, max_tokens: Optional[int], temperature: Optional[float],
                     top_p: Optional[float], top_k: Optional[int],
                     stop: Union[None, str, Sequence[str]], seed: Optional[int],
                     forced: Union[None, str, Sequence[int]], stream: bool) -> Dict[str, Any]:
    params = _drop_none(session=session, max_tokens=max_tokens, temperature=temperature,
                        top_p=top_p, top_k=top_k, seed=seed)
    if stop is not None:
        params["stop"] = stop if isinstance(stop, str) else list(stop)
    if forced is not None:
        if isinstance(forced, str):
            params["forced"] = forced
        else:
            params["forced_tokens"] = [int(t) for t in forced]
    if stream:
        params["stream"] = True
    return params


def _tool_end_params(session: str, content: Optional[str], tokens: Optional[Sequence[int]],
                     tool: Optional[str], name: Optional[str],
                     tool_call_id: Optional[str]) -> Dict[str, Any]:
    params = _drop_none(session=session, content=content, tool=tool, name=name,
                        tool_call_id=tool_call_id)
    if tokens is not None:
        params["tokens"] = [int(t) for t in tokens]
    return params


def _encode(request_id: int, verb: str, params: Dict[str, Any]) -> bytes:
    request = {"id": request_id, "verb": verb}
    request.update(params)
    return (json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _stream_item(message: Dict[str, Any]) -> Optional[StreamItem]:
    """The item a stream yields for one line, or None for an unknown event kind.
    REQUIRES: the line is not an error."""
    if "result" in message:
        return GenerateResult.from_result(message["result"])
    if message.get("event") == "token":
        return TokenEvent(token=int(message.get("token", -1)), text=message.get("text", ""))
    return None


_DONE = object()  # marks the end of a connection in the per-request queues


# ---- synchronous client ---------------------------------------------------------------


class Stream:
    """Iterator over a streaming generate: TokenEvent items, then one GenerateResult.
    Errors (including Cancelled) are raised from iteration. Closing it early (``close()``
    or leaving a ``for`` loop by break) cancels the generation in the daemon."""

    def __init__(self, client: "Client", request_id: int, replies: "queue.Queue"):
        self._client = client
        self.request_id = request_id
        self._replies = replies
        self._finished = False

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamItem:
        while not self._finished:
            message = self._client._next_reply(self.request_id, self._replies)
            if "error" in message:
                self._finished = True
                raise _error_from_reply(message)
            if "result" in message:
                self._finished = True
            item = _stream_item(message)
            if item is not None:
                return item
        raise StopIteration

    def cancel(self) -> None:
        """Asks the daemon to cancel; iteration then ends with Cancelled (or with the
        result, if generation finished first)."""
        if not self._finished:
            try:
                self._client.cancel(self.request_id)
            except NotFound:
                pass  # already finished; the terminal line is queued

    def close(self) -> None:
        """Stops consuming: cancels if still running and discards the remaining lines."""
        if not self._finished:
            self._finished = True
            self._client._abandon(self.request_id)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


class Client:
    """A blocking client over one Unix-socket connection.

    Thread-safe: several threads may issue requests at once; they share the connection.
    ``timeout`` (seconds, None = wait forever) bounds each wait for a reply line.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = None):
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.socket_path)
        except OSError as e:
            self._sock.close()
            raise ConnectionClosed(f"cannot connect to {self.socket_path}: {e}") from e
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _pending, _abandoned, _closed
        self._pending: Dict[int, "queue.Queue"] = {}
        self._abandoned: set = set()
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="kvkeep-client-reader",
                                        daemon=True)
        self._reader.start()

    # -- connection -----------------------------------------------------------------

    def disconnect(self) -> None:
        """Closes the connection. Requests still waiting fail with ConnectionClosed; the
        daemon cancels their generations (sessions stay)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    def _read_loop(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while True:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        if len(buffer) > _MAX_REPLY_LINE_BYTES:
                            raise ValueError("reply line too long")
                        break
                    line = bytes(buffer[:newline])
                    del buffer[:newline + 1]
                    if line.strip():
                        self._dispatch(json.loads(line))
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._closed = True
                waiting = list(self._pending.values())
                self._pending.clear()
            for replies in waiting:
                replies.put(_DONE)

    def _dispatch(self, message: Dict[str, Any]) -> None:
        request_id = message.get("id")
        terminal = "result" in message or "error" in message
        with self._lock:
            replies = self._pending.get(request_id)
            abandoned = request_id in self._abandoned
            if terminal:
                self._pending.pop(request_id, None)
                self._abandoned.discard(request_id)
        if replies is not None and not abandoned:
            replies.put(message)
        # Lines for no known request (id null: the daemon could not read our id) are
        # dropped; every request of ours carries an id.

    # -- request plumbing -----------------------------------------------------------

    def _send(self, verb: str, params: Dict[str, Any]) -> "tuple[int, queue.Queue]":
        request_id = next(self._ids)
        replies: "queue.Queue" = queue.Queue()
        with self._lock:
            if self._closed:
                raise ConnectionClosed("connection closed", request_id=request_id)
            self._pending[request_id] = replies
        data = _encode(request_id, verb, params)
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as e:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ConnectionClosed(f"send failed: {e}", request_id=request_id) from e
        return request_id, replies

    def _next_reply(self, request_id: int, replies: "queue.Queue") -> Dict[str, Any]:
        try:
            message = replies.get(timeout=self.timeout)
        except queue.Empty:
            self._abandon(request_id)
            raise ConnectionClosed(f"no reply within {self.timeout} s",
                                   request_id=request_id) from None
        if message is _DONE:
            raise ConnectionClosed("connection closed before the reply", request_id=request_id)
        return message

    def _abandon(self, request_id: int) -> None:
        """Drops the lines still to come for request_id and cancels it in the daemon."""
        with self._lock:
            if request_id not in self._pending or self._closed:
                return
            self._abandoned.add(request_id)
        try:
            self._send("cancel", {"target": request_id})  # its reply is not awaited
        except ConnectionClosed:
            pass

    def request(self, verb: str, **params: Any) -> Dict[str, Any]:
        """Sends any verb and returns its ``result`` object (raises on ``error``)."""
        request_id, replies = self._send(verb, params)
        while True:
            message = self._next_reply(request_id, replies)
            if "error" in message:
                raise _error_from_reply(message)
            if "result" in message:
                return message["result"]

    # -- verbs ----------------------------------------------------------------------

    def hello(self) -> Dict[str, Any]:
        return self.request("hello")

    def open_session(self, session: Optional[str] = None, system: Optional[str] = None) -> str:
        """Opens (or reopens a kept) session; returns its id."""
        return self.request("session.open", **_drop_none(session=session, system=system))[
            "session"]

    def append(self, session: str, messages: Messages) -> Dict[str, Any]:
        return self.request("session.append", session=session, messages=_messages(messages))

    def generate(self, session: str, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, top_p: Optional[float] = None,
                 top_k: Optional[int] = None, stop: Union[None, str, Sequence[str]] = None,
                 seed: Optional[int] = None,
                 forced: Union[None, str, Sequence[int]] = None) -> GenerateResult:
        """Generates the assistant's next message. ``forced`` (text or token ids) is
        decoded through the model as if generated (teacher forcing)."""
        return GenerateResult.from_result(self.request(
            "session.generate",
            **_generate_params(session, max_tokens, temperature, top_p, top_k, stop, seed,
                               forced, stream=False)))

    def stream(self, session: str, max_tokens: Optional[int] = None,
               temperature: Optional[float] = None, top_p: Optional[float] = None,
               top_k: Optional[int] = None, stop: Union[None, str, Sequence[str]] = None,
               seed: Optional[int] = None,
               forced: Union[None, str, Sequence[int]] = None) -> Stream:
        """As generate, streaming: yields TokenEvent items, then the GenerateResult."""
        request_id, replies = self._send(
            "session.generate",
            _generate_params(session, max_tokens, temperature, top_p, top_k, stop, seed,
                             forced, stream=True))
        return Stream(self, request_id, replies)

    def tool_begin(self, session: str, tool: str, args: Optional[str] = None) -> Dict[str, Any]:
        return self.request("session.tool_begin", **_drop_none(session=session, tool=tool,
                                                               args=args))

    def tool_end(self, session: str, content: Optional[str] = None,
                 tokens: Optional[Sequence[int]] = None, tool: Optional[str] = None,
                 name: Optional[str] = None, tool_call_id: Optional[str] = None) -> Dict[str, Any]:
        return self.request("session.tool_end",
                            **_tool_end_params(session, content, tokens, tool, name,
                                               tool_call_id))

    def fork(self, session: str, new_session: Optional[str] = None) -> str:
        """Copy-on-write branch; returns the new session's id."""
        return self.request("session.fork", **_drop_none(session=session,
                                                         new_session=new_session))["session"]

    def close(self, session: str, keep: bool = True) -> Dict[str, Any]:
        """Closes a session (kept in the store unless keep=False). To close the
        connection, use disconnect() or a with block."""
        return self.request("session.close", session=session, keep=keep)

    def session_info(self, session: str, messages: bool = True) -> Dict[str, Any]:
        return self.request("session.info", session=session, messages=messages)

    def list_sessions(self, all: bool = False, closed: bool = False) -> List[Dict[str, Any]]:
        return self.request("sessions.list", all=all, closed=closed)["sessions"]

    def stats(self, format: str = "json") -> Union[Dict[str, Any], str]:
        """Counters and histograms; format="prometheus" returns the exposition text."""
        result = self.request("stats", format=format)
        return result["text"] if format == "prometheus" else result

    def cancel(self, target: Union[int, str]) -> Dict[str, Any]:
        """Cancels this connection's in-flight request `target` (a request id, e.g.
        Stream.request_id). NotFound when it already finished."""
        return self.request("cancel", target=target)


# ---- asyncio client -------------------------------------------------------------------


class AsyncStream:
    """Async iterator over a streaming generate (see Stream)."""

    def __init__(self, client: "AsyncClient", request_id: int, replies: "asyncio.Queue"):
        self._client = client
        self.request_id = request_id
        self._replies = replies
        self._finished = False

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> StreamItem:
        while not self._finished:
            message = await self._client._next_reply(self.request_id, self._replies)
            if "error" in message:
                self._finished = True
                raise _error_from_reply(message)
            if "result" in message:
                self._finished = True
            item = _stream_item(message)
            if item is not None:
                return item
        raise StopAsyncIteration

    async def cancel(self) -> None:
        if not self._finished:
            try:
                await self._client.cancel(self.request_id)
            except NotFound:
                pass

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            await self._client._abandon(self.request_id)


class AsyncClient:
    """The asyncio twin of Client: the same methods, as coroutines; ``stream`` returns an
    async iterator. Use ``async with AsyncClient(path) as c`` or
    ``c = await AsyncClient.open(path)`` ... ``await c.disconnect()``.
    One connection; any number of concurrent requests (tasks) multiplexed over it."""

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = None):
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._read_task: Optional[asyncio.Task] = None
        self._ids = itertools.count(1)
        self._pending: Dict[int, "asyncio.Queue"] = {}
        self._abandoned: set = set()
        self._closed = False

    @classmethod
    async def open(cls, socket_path: Optional[str] = None,
                   timeout: Optional[float] = None) -> "AsyncClient":
        client = cls(socket_path, timeout)
        await client.connect()
        return client

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.socket_path, limit=_MAX_REPLY_LINE_BYTES)
        except OSError as e:
            raise ConnectionClosed(f"cannot connect to {self.socket_path}: {e}") from e
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def disconnect(self) -> None:
        if self._writer is None or self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
        if self._read_task is not None:
            await asyncio.gather(self._read_task, return_exceptions=True)

    async def __aenter__(self) -> "AsyncClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.disconnect()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                if line.strip():
                    self._dispatch(json.loads(line))
        except (OSError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            pass
        finally:
            self._closed = True
            waiting = list(self._pending.values())
            self._pending.clear()
            for replies in waiting:
                replies.put_nowait(_DONE)

    def _dispatch(self, message: Dict[str, Any]) -> None:
        request_id = message.get("id")
        replies = self._pending.get(request_id)
        abandoned = request_id in self._abandoned
        if "result" in message or "error" in message:
            self._pending.pop(request_id, None)
            self._abandoned.discard(request_id)
        if replies is not None and not abandoned:
            replies.put_nowait(message)

    async def _send(self, verb: str, params: Dict[str, Any]) -> "tuple[int, asyncio.Queue]":
        if self._writer is None:
            await self.connect()
        request_id = next(self._ids)
        if self._closed:
            raise ConnectionClosed("connection closed", request_id=request_id)
        replies: "asyncio.Queue" = asyncio.Queue()
        self._pending[request_id] = replies
        try:
            self._writer.write(_encode(request_id, verb, params))
            await self._writer.drain()
        except OSError as e:
            self._pending.pop(request_id, None)
            raise ConnectionClosed(f"send failed: {e}", request_id=request_id) from e
        return request_id, replies

    async def _next_reply(self, request_id: int, replies: "asyncio.Queue") -> Dict[str, Any]:
        try:
            message = await asyncio.wait_for(replies.get(), self.timeout)
        except asyncio.TimeoutError:
            await self._abandon(request_id)
            raise ConnectionClosed(f"no reply within {self.timeout} s",
                                   request_id=request_id) from None
        if message is _DONE:
            raise ConnectionClosed("connection closed before the reply", request_id=request_id)
        return message

    async def _abandon(self, request_id: int) -> None:
        if request_id not in self._pending or self._closed:
            return
        self._abandoned.add(request_id)
        try:
            await self._send("cancel", {"target": request_id})
        except ConnectionClosed:
            pass

    async def request(self, verb: str, **params: Any) -> Dict[str, Any]:
        request_id, replies = await self._send(verb, params)
        while True:
            message = await self._next_reply(request_id, replies)
            if "error" in message:
                raise _error_from_reply(message)
            if "result" in message:
                return message["result"]

    # -- verbs (see Client for their documentation) ----------------------------------

    async def hello(self) -> Dict[str, Any]:
        return await self.request("hello")

    async def open_session(self, session: Optional[str] = None,
                           system: Optional[str] = None) -> str:
        result = await self.request("session.open", **_drop_none(session=session, system=system))
        return result["session"]

    async def append(self, session: str, messages: Messages) -> Dict[str, Any]:
        return await self.request("session.append", session=session,
                                  messages=_messages(messages))

    async def generate(self, session: str, max_tokens: Optional[int] = None,
                       temperature: Optional[float] = None, top_p: Optional[float] = None,
                       top_k: Optional[int] = None,
                       stop: Union[None, str, Sequence[str]] = None, seed: Optional[int] = None,
                       forced: Union[None, str, Sequence[int]] = None) -> GenerateResult:
        return GenerateResult.from_result(await self.request(
            "session.generate",
            **_generate_params(session, max_tokens, temperature, top_p, top_k, stop, seed,
                               forced, stream=False)))

    async def stream(self, session: str, max_tokens: Optional[int] = None,
                     temperature: Optional[float] = None, top_p: Optional[float] = None,
                     top_k: Optional[int] = None, stop: Union[None, str, Sequence[str]] = None,
                     seed: Optional[int] = None,
                     forced: Union[None, str, Sequence[int]] = None) -> AsyncStream:
        """``async for ev in await c.stream(sid, ...)``: TokenEvent items, then the
        GenerateResult."""
        request_id, replies = await self._send(
            "session.generate",
            _generate_params(session, max_tokens, temperature, top_p, top_k, stop, seed,
                             forced, stream=True))
        return AsyncStream(self, request_id, replies)

    async def tool_begin(self, session: str, tool: str,
                         args: Optional[str] = None) -> Dict[str, Any]:
        return await self.request("session.tool_begin",
                                  **_drop_none(session=session, tool=tool, args=args))

    async def tool_end(self, session: str, content: Optional[str] = None,
                       tokens: Optional[Sequence[int]] = None, tool: Optional[str] = None,
                       name: Optional[str] = None,
                       tool_call_id: Optional[str] = None) -> Dict[str, Any]:
        return await self.request("session.tool_end",
                                  **_tool_end_params(session, content, tokens, tool, name,
                                                     tool_call_id))

    async def fork(self, session: str, new_session: Optional[str] = None) -> str:
        result = await self.request("session.fork",
                                    **_drop_none(session=session, new_session=new_session))
        return result["session"]

    async def close(self, session: str, keep: bool = True) -> Dict[str, Any]:
        return await self.request("session.close", session=session, keep=keep)

    async def session_info(self, session: str, messages: bool = True) -> Dict[str, Any]:
        return await self.request("session.info", session=session, messages=messages)

    async def list_sessions(self, all: bool = False,
                            closed: bool = False) -> List[Dict[str, Any]]:
        return (await self.request("sessions.list", all=all, closed=closed))["sessions"]

    async def stats(self, format: str = "json") -> Union[Dict[str, Any], str]:
        result = await self.request("stats", format=format)
        return result["text"] if format == "prometheus" else result

    async def cancel(self, target: Union[int, str]) -> Dict[str, Any]:
        return await self.request("cancel", target=target)
