"""Playing one ``Reply`` onto a connection: pacing, framing faults and broken endings.

Theory of operation: ``Generation.run`` first waits out the model-load delay (before the
head, as Ollama loads the runner before gin writes anything), then writes lines on an
absolute schedule ``first + i / token_rate`` so drift does not accumulate; a stream that
falls behind resumes from "now" instead of bursting. Every line passes through ``_Output``,
which applies the framing faults (coalesce, byte by byte, split writes, slow head); with
none of those set the hot path frames and writes inline with no extra awaits. After K
lines a fault may break the stream off (stall, reset, truncate, error line); otherwise the
done line and the last chunk follow. Non-stream replies take the same time to "generate"
and then go out as one Content-Length body.

Cancellation is the exit for a client that leaves: the connection ends the record and
cancels this task, so nothing here needs to poll for a closed socket.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .script import Fault, Reply
from .wire import JSON_UTF8, LAST_CHUNK, NDJSON, Lines, chunk, error_body, metrics, response_head

if TYPE_CHECKING:
    from .connection import SimConnection
    from .records import Recorder, StreamRecord

__all__ = ["Generation"]

NANOS_PER_SECOND = 1_000_000_000
# Nominal costs for the done line's metrics; real values vary, these only need to be >0.
LOAD_FLOOR_NS = 1_000_000
PROMPT_EVAL_NS_PER_TOKEN = 250_000
# Rough characters per token when the reply does not give prompt_eval_count.
CHARS_PER_TOKEN = 4
# A generate done line carries at most this many (made-up) context token ids.
CONTEXT_IDS_MAX = 16
# How much more than sent a short_body / truncated non-stream Content-Length promises.
SHORT_BODY_MISSING_BYTES = 1000
# Giant lines go out in slices this big, each after the transport accepted the last.
GIANT_SLICE_BYTES = 64 * 1024
# A flood yields to the loop every so many lines even if the transport never pushes back.
FLOOD_YIELD_EVERY = 64
SSH_GREETING = b"SSH-2.0-OpenSSH_9.6\r\n"


class _Output:
    """Writes body bytes through the framing faults; owns the not-yet-sent head."""

    def __init__(self, conn: SimConnection, fault: Fault, head: bytes) -> None:
        self.conn = conn
        self.head = head
        self.slow_head = fault.slow_headers
        self.byte_by_byte = fault.byte_by_byte
        self.coalesce = fault.coalesce if fault.coalesce and fault.coalesce > 1 else 0
        self.split = fault.split_writes if fault.split_writes and fault.split_writes > 1 else 0
        self.rng = random.Random(fault.seed)
        self.group: list[bytes] = []
        self.plain = not (
            self.slow_head is not None or self.byte_by_byte or self.coalesce or self.split
        )

    async def line(self, line: bytes) -> None:
        if self.coalesce:
            self.group.append(line)
            if len(self.group) >= self.coalesce:
                await self.flush()
        else:
            await self.body(line)

    async def flush(self) -> None:
        """Send grouped lines, or the bare head if nothing has gone out yet."""
        if self.group:
            payload = b"".join(self.group)
            self.group.clear()
            await self.body(payload)
        elif self.head:
            await self.write(b"")

    async def body(self, payload: bytes, *, chunked: bool = True) -> None:
        if self.byte_by_byte:
            for index in range(len(payload)):
                piece = payload[index : index + 1]
                await self.write(b"1\r\n" + piece + b"\r\n" if chunked else piece)
            if self.head:
                await self.write(b"")
        else:
            await self.write(chunk(payload) if chunked else payload)

    async def end(self) -> None:
        await self.flush()
        await self.write(LAST_CHUNK)

    async def write(self, data: bytes) -> None:
        conn = self.conn
        if self.head:
            head, self.head = self.head, b""
            if self.slow_head is not None:
                for index in range(len(head)):
                    conn.write(head[index : index + 1])
                    await asyncio.sleep(self.slow_head)
            else:
                data = head + data
        if self.split and len(data) > 1:
            cuts = sorted(self.rng.sample(range(1, len(data)), min(self.split, len(data)) - 1))
            start = 0
            for cut in [*cuts, len(data)]:
                conn.write(data[start:cut])
                start = cut
                # Yield so each piece reaches the socket in its own send().
                await asyncio.sleep(0)
        elif data:
            conn.write(data)
            if self.byte_by_byte:
                await asyncio.sleep(0)
        if conn.paused:
            await conn.drain()


class Generation:
    """One reply being played to one connection; ``run`` returns whether keep-alive holds."""

    def __init__(
        self,
        recorder: Recorder,
        conn: SimConnection,
        record: StreamRecord,
        lines: Lines,
        reply: Reply,
        fault: Fault,
        *,
        token_rate: float | None,
        first_delay: float,
        close: bool,
        prompt_chars: int,
    ) -> None:
        self.recorder = recorder
        self.conn = conn
        self.record = record
        self.lines = lines
        self.reply = reply
        self.fault = fault
        self.interval = None if not token_rate or fault.flood else 1.0 / token_rate
        self.first_delay = fault.first_delay if fault.first_delay is not None else first_delay
        self.close = close
        self.prompt_chars = prompt_chars
        self.loop = asyncio.get_running_loop()

    async def run(self) -> bool:
        conn, fault = self.conn, self.fault
        if fault.blackhole:
            await self.loop.create_future()
        if self.first_delay > 0:
            await asyncio.sleep(self.first_delay)
        if fault.garbage:
            conn.write(SSH_GREETING)
            self.recorder._finish_stream(self.record, "fault")
            conn.close()
            return False
        if fault.status is not None or fault.redirect is not None:
            await self._status_reply(fault)
            self.recorder._finish_stream(self.record, "fault")
            return True
        if self.record.streaming:
            return await self._stream()
        return await self._whole()

    def _pieces(self) -> Iterator[tuple[Callable[[Any], bytes], Any]]:
        # Renderers, not lines: a line is stamped with created_at when it is written.
        lines = self.lines
        for piece in self.reply.thinking:
            yield lines.thinking, piece
        for piece in self.reply.tokens:
            yield lines.content, piece
        if self.reply.tool_calls and lines.chat:
            yield lines.tool_calls, self.reply.tool_calls
        if self.fault.flood:
            number = 0
            while True:
                number += 1
                yield lines.content, f" f{number:06d}"

    async def _stream(self) -> bool:
        conn, record, fault = self.conn, self.record, self.fault
        head = response_head(200, [("Content-Type", NDJSON)], chunked=True, close=self.close)
        out = _Output(conn, fault, head)
        if fault.giant_line:
            await self._giant(out, fault.giant_line)
        interval, loop = self.interval, self.loop
        stop_at = fault.break_after
        sent = 0
        next_at = 0.0
        for render, piece in self._pieces():
            if sent == stop_at:
                return await self._break_off(out)
            if sent == 0:
                record.first_token_at = next_at = loop.time()
            elif interval is not None:
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = loop.time()
                    await asyncio.sleep(0)
            elif not fault.flood or sent % FLOOD_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            line = render(piece)
            if out.plain:
                data = chunk(line)
                if out.head:
                    data = out.head + data
                    out.head = b""
                conn.write(data)
                if conn.paused:
                    await conn.drain()
            else:
                await out.line(line)
            sent += 1
            record.tokens_sent = sent
        if stop_at is not None:
            return await self._break_off(out)
        if interval is not None and sent:
            # The done line comes one token time after the last piece, as EOS would.
            await asyncio.sleep(max(0.0, next_at + interval - loop.time()))
        if record.first_token_at is None:
            record.first_token_at = loop.time()
        if fault.eof_no_done:
            await out.end()
            self.recorder._finish_stream(record, "fault")
            return True
        reply = self.reply
        calls = reply.tool_calls if not self.lines.chat else None
        await out.line(self._final(content=reply.done_content, tool_calls=calls) + b"\n")
        if fault.extra_after_done:
            await out.line(fault.extra_bytes)
        if fault.end_delay:
            await out.flush()
            await asyncio.sleep(fault.end_delay)
        await out.end()
        self.recorder._finish_stream(record, "fault" if fault.extra_after_done else "complete")
        return True

    async def _status_reply(self, fault: Fault) -> None:
        if fault.redirect is not None:
            status, headers, body = 302, [("Location", fault.redirect)], b""
        else:
            assert fault.status is not None
            status = fault.status
            body = (
                fault.body
                if fault.body is not None
                else error_body(f"simulated failure (status {status})")
            )
            headers = [("Content-Type", fault.content_type)]
        head = response_head(status, headers, content_length=len(body), close=self.close)
        await _Output(self.conn, fault, head).body(body, chunked=False)

    async def _break_off(self, out: _Output) -> bool:
        conn, record, fault = self.conn, self.record, self.fault
        await out.flush()
        if fault.error_line_after is not None:
            await out.line(error_body(fault.error_message) + b"\n")
            await out.end()
            self.recorder._finish_stream(record, "fault")
            return True
        if fault.reset_after is not None:
            await conn.flush_all()
            self.recorder._finish_stream(record, "fault")
            conn.reset()
            return False
        if fault.truncate_chunked is not None:
            if fault.truncate_mid_chunk:
                whole = chunk(self.lines.content(" cut"))
                await out.write(whole[: len(whole) // 2])
            self.recorder._finish_stream(record, "fault")
            conn.close()
            return False
        # stall_after: silence until the client gives up (the connection cancels us).
        await self.loop.create_future()
        return False

    async def _giant(self, out: _Output, size: int) -> None:
        prefix = self.lines.giant_prefix()[:size]
        await out.write(b"%x\r\n" % size + prefix)
        filler = b"x" * GIANT_SLICE_BYTES
        left = size - len(prefix)
        while left > 0:
            await out.write(filler[:left])
            left -= GIANT_SLICE_BYTES
        await out.write(b"\r\n")
        await self.loop.create_future()

    async def _whole(self) -> bool:
        conn, record, fault, reply = self.conn, self.record, self.fault, self.reply
        count = len(reply.thinking) + len(reply.tokens) + (1 if reply.tool_calls else 0)
        stop_at = fault.break_after
        produced = count if stop_at is None else min(stop_at, count)
        record.first_token_at = self.loop.time()
        if self.interval is not None and produced:
            await asyncio.sleep(self.interval * produced)
        record.tokens_sent = produced
        if fault.stall_after is not None:
            await self.loop.create_future()
        if fault.reset_after is not None:
            self.recorder._finish_stream(record, "fault")
            conn.reset()
            return False
        if fault.error_line_after is not None:
            body = error_body(fault.error_message)
            head = response_head(500, [("Content-Type", JSON_UTF8)], content_length=len(body))
            await _Output(conn, fault, head).body(body, chunked=False)
            self.recorder._finish_stream(record, "fault")
            return True
        body = self._final(
            content="".join(reply.tokens) + reply.done_content,
            thinking="".join(reply.thinking),
            tool_calls=reply.tool_calls,
            done=not fault.eof_no_done,
        )
        if fault.extra_after_done:
            body += fault.extra_bytes
        broken = fault.short_body or fault.truncate_chunked is not None
        length = len(body) + (SHORT_BODY_MISSING_BYTES if broken else 0)
        head = response_head(
            200, [("Content-Type", JSON_UTF8)], content_length=length, close=self.close
        )
        out = _Output(conn, fault, head)
        await out.body(body, chunked=False)
        faulty = broken or fault.eof_no_done or fault.extra_after_done
        self.recorder._finish_stream(record, "fault" if faulty else "complete")
        if broken:
            conn.close()
            return False
        return True

    def _final(
        self,
        *,
        content: str,
        thinking: str | None = None,
        tool_calls: list[dict[str, object]] | None = None,
        done: bool = True,
    ) -> bytes:
        reply, record = self.reply, self.record
        prompt_count = reply.prompt_eval_count
        if prompt_count is None:
            prompt_count = max(1, self.prompt_chars // CHARS_PER_TOKEN)
        eval_count = reply.eval_count
        if eval_count is None:
            eval_count = record.tokens_sent
        now = self.loop.time()
        first = record.first_token_at if record.first_token_at is not None else now
        load = max(LOAD_FLOOR_NS, int(self.first_delay * NANOS_PER_SECOND))
        prompt_eval = prompt_count * PROMPT_EVAL_NS_PER_TOKEN
        evaluation = max(1, int((now - first) * NANOS_PER_SECOND))
        measured = int((now - record.request.received_at) * NANOS_PER_SECOND)
        total = max(measured, load + prompt_eval + evaluation)
        stats = metrics(total, load, prompt_count, prompt_eval, eval_count, evaluation)
        if not done:
            stats = {}
        context = None
        if not self.lines.chat and done:
            context = list(range(1, min(prompt_count + eval_count, CONTEXT_IDS_MAX) + 1))
        return self.lines.final(
            reply.done_reason if done else "",
            stats,
            content=content,
            thinking=thinking,
            tool_calls=tool_calls,
            context=context,
            done=done,
        )
