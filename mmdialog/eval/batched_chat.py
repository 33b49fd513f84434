"""The model's own history for many dialogues at once: the greedy replies ChatSession gives, in batches.

A real chat (own history) asks round after round, each reply part of the next round's context, so it cannot
be teacher forced; one ChatSession per dialogue spends its time on batch-1 forward passes. Here a batch of
dialogues advances in lockstep with ONE KV cache whose rows are the dialogues:

    round r   each row renders its conversation (system, earlier questions, its own replies, question r, the
              assistant header) exactly as ChatSession does; the ids past the row's cached prefix are fed
              (rows of different lengths: padded to the longest, the pads masked); then greedy decoding,
              one token per row per step, until every row has its <|end|> or its max_new_tokens

Rows hold their tokens in different columns, so every token gets its row's own RoPE position (the decoder's
position_ids with a cache) and attention_mask hides the gaps: each row computes what it would alone. When a
reply's text re-tokenises to other ids than were generated, the row's columns from the first difference on
are masked and the rendered ids fed instead (what ChatSession does by cropping its cache). Before each round
the cache is compacted (each row's live columns gathered to the right) so it stays as long as the longest row.
Tokens are fed through the model's forward with the cache (logits at each row's last new token), and replies
decoded by model.decode, the loop ChatSession uses, with its sampler (greedy): banned ids never chosen, <|end|>
never a reply's first token, at most min(max_new_tokens, max_seq_len - prompt) tokens.

Needs a fusion that only fills placeholder slots and a decoder with per-row positions under a cache
(`supported`); lab.own_history_rows falls back to one ChatSession per dialogue otherwise.
"""

from __future__ import annotations

import torch

from mmdialog.chat.sampling import Sampler, SamplingParams
from mmdialog.data.collate import reader_batch
from mmdialog.data.conversation import Conversation, Text, Turn
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.eval.contexts import user_parts
from mmdialog.modalities import by_name
from mmdialog.model import MultimodalLM, decode
from mmdialog.modules.kv_cache import KVCache


class _Columns(KVCache):
    """A KVCache of preallocated (B, H_kv, capacity, hs) buffers per layer: appending writes in place, so a
    decoding step costs no copy of the whole cache. The attention modules use only update and seq_len."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.lengths: list[int] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys.append(k.new_zeros(shape))
            self.values.append(v.new_zeros(shape))
            self.lengths.append(0)
        n, T = self.lengths[layer], k.shape[2]
        if n + T > self.capacity:
            raise MMDialogError(f"{n + T} cache columns needed, {self.capacity} allocated")
        self.keys[layer][:, :, n:n + T] = k
        self.values[layer][:, :, n:n + T] = v
        self.lengths[layer] = n + T
        return self.keys[layer][:, :, :n + T], self.values[layer][:, :, :n + T]

    @property
    def seq_len(self) -> int:
        return self.lengths[0] if self.lengths else 0

    def gather(self, idx: torch.Tensor) -> None:
        """Keep, for row b, the columns idx[b] (B, n), in that order."""
        n = idx.shape[1]
        for layer in range(len(self.keys)):
            for buf in (self.keys[layer], self.values[layer]):
                g = idx[:, None, :, None].expand(buf.shape[0], buf.shape[1], n, buf.shape[3])
                buf[:, :, :n] = buf[:, :, :self.lengths[layer]].gather(2, g)
            self.lengths[layer] = n


def supported(model: MultimodalLM) -> bool:
    return not model.fusion.mixes_positions and model.decoder.supports_cached_positions


class _Row:
    def __init__(self, record: dict, image):
        self.record, self.image = record, image
        self.conv = Conversation()
        if record.get("system"):
            self.conv.turns.append(Turn("system", list(record["system"])))
        self.fed: list[int] = []  # ids of the row's live cache columns, in order
        self.cols: list[int] = []  # their columns
        self.media_fed: dict[str, int] = {}  # media items (per modality) among the fed ids
        self.replies: list[str] = []
        self.error: str | None = None


@torch.no_grad()
def own_history_replies(model: MultimodalLM, processor: Processor, records: list[dict], images: dict, *,
                        max_new_tokens: int, batch_size: int = 64) -> dict[str, list[str] | str]:
    """Per record id: the greedy reply to every round in a real chat, or the error (str) that stopped it
    (the conversation outgrew the model's context, as ChatSession would refuse it)."""
    out: dict[str, list[str] | str] = {}
    order = sorted(records, key=lambda r: len(r["rounds"]))  # rows that end together share a batch
    for i in range(0, len(order), batch_size):
        rows = [_Row(rec, images.get(rec["id"])) for rec in order[i:i + batch_size]]
        _run(model, processor, rows, max_new_tokens)
        for row in rows:
            out[row.record["id"]] = row.error if row.error is not None else row.replies
    return out


def _run(model: MultimodalLM, processor: Processor, rows: list[_Row], max_new_tokens: int) -> None:
    """Every round of these rows, in lockstep: each row's replies (or error) filled in."""
    batch = _Batch(model, processor, rows, max_new_tokens)
    for r in range(max(len(row.record["rounds"]) for row in rows)):
        batch.round(r)


class _Batch:
    """The rows of one batch and what they share: one KV cache whose rows are the dialogues, the mask of each
    row's live columns, the media already encoded."""

    def __init__(self, model: MultimodalLM, processor: Processor, rows: list[_Row], max_new_tokens: int):
        self.model, self.processor, self.rows, self.max_new_tokens = model, processor, rows, max_new_tokens
        self.tok = tok = processor.tokenizer
        self.device = next(model.parameters()).device
        self.max_len = model.decoder.max_seq_len
        self.placeholders = {tok.media_ids[m]: (m, processor.media_tokens(m)) for m in processor.media}
        self.sampler = Sampler(SamplingParams(), tok.never_generated, end_id=tok.end_id)  # greedy, ChatSession's rules
        self.B = len(rows)
        self.cache = _Columns(self.max_len)
        self.mask = torch.zeros(self.B, 0, dtype=torch.long, device=self.device)  # (B, S): 1 = a live column
        self.encoded: dict[int, torch.Tensor] = {}  # id(part) -> (1, T_m, d)

    def round(self, r: int) -> None:
        """Round r: every row still going renders its conversation and feeds what its cache lacks, then the
        greedy replies are decoded together and appended to the rows' conversations."""
        self.compact()
        B = self.B
        new, items, positions, active = [], [], [], []
        reading = [None] * B if self.processor.reader is not None else None
        for b, row in enumerate(self.rows):
            chunk = self.chunk(b, row, r)
            if chunk is None:
                new.append([]), items.append([]), positions.append(len(row.fed))
                continue
            ids, p, fresh, read = chunk
            new.append(ids[p:]), items.append(fresh), positions.append(p)
            active.append((b, len(ids)))
            if reading is not None:
                reading[b] = read
        if not active:
            return
        if self.mask.shape[1] + max(len(n) for n in new) + self.max_new_tokens > self.cache.capacity:
            raise MMDialogError(f"a batch of {B} dialogues needs more than the model's {self.max_len} cache columns "
                                f"at round {r}; run it with a smaller batch")
        logits = self.feed(new, items, positions, reading, last=[max(len(n) - 1, 0) for n in new])
        reply = self.decode(logits[[b for b, _ in active]], active)
        for b, _ in active:
            text = self.tok.decode(reply[b])
            self.rows[b].replies.append(text)
            self.rows[b].conv.turns.append(Turn("assistant", [Text(text)]))

    def chunk(self, b: int, row: _Row, r: int) -> tuple[list[int], int, list, tuple | None] | None:
        """Row b's question r rendered: (its ids, how many of them the cache keeps, the media items past those,
        the reader's inputs for the ids past those); the columns past the kept ones are masked. None when the
        row has no round r or stops here (row.error set: the conversation outgrew the model's context)."""
        if row.error is not None or r >= len(row.record["rounds"]):
            return None
        row.conv.turns.append(Turn("user", user_parts(row.record, r, row.image)))
        ids = self.processor.expanded_ids(row.conv, add_generation_prompt=True,
                                          where=f"dialogue {row.record['id']}")
        if len(ids) >= self.max_len:
            row.error = (f"the conversation needs {len(ids)} tokens, over the model's max_seq_len {self.max_len}; "
                         "choose a context policy such as last_k or token_budget")
            return None
        p = self.kept_prefix(row, ids)
        dead = row.cols[p:]
        if dead:
            self.mask[b, dead] = 0
        row.fed, row.cols = row.fed[:p], row.cols[:p]
        fresh = self.fresh_items(row, ids[:p])
        read = None
        if self.processor.reader is not None:  # the earlier turns' cached tokens read the same texts: only this chunk's
            turns, index = self.processor.reader_inputs(row.conv, ids)
            read = (turns, index[p:])
        return ids, p, fresh, read

    def kept_prefix(self, row: _Row, ids: list[int]) -> int:
        """How many leading ids the row's cache already holds, at least one left to feed (its logits are the
        next-token distribution), never cutting a media item in two."""
        p = 0
        while p < min(len(ids), len(row.fed)) and ids[p] == row.fed[p]:
            p += 1
        p = min(p, len(ids) - 1)
        ph = self.placeholders
        while p > 0 and ids[p - 1] in ph and ids[p] in ph and ids[:p].count(ids[p - 1]) % ph[ids[p - 1]][1]:
            p -= 1
        return p

    def fresh_items(self, row: _Row, kept_ids: list[int]) -> list:
        """The media items of the row's conversation that kept_ids do not already hold, in order."""
        proc = self.processor
        conv_items = [x for t in row.conv.turns for x in t.parts if not isinstance(x, Text)]
        kept = {m: kept_ids.count(self.tok.media_ids[m]) // proc.media_tokens(m) for m in proc.media}
        fresh, seen = [], {m: 0 for m in proc.media}
        for x in conv_items:
            if seen[x.type] >= kept[x.type]:
                fresh.append(x)
            seen[x.type] += 1
        return fresh

    def decode(self, logits: torch.Tensor, active: list[tuple[int, int]]) -> dict[int, list[int]]:
        """Greedy replies of the active rows (b, prompt length) from their next-token logits (A, V), through
        model.decode with ChatSession's sampler: one token per row per step, until every row has its <|end|>
        or its token limit."""
        rows = [b for b, _ in active]

        def feed(going: list[int], tokens: list[int]) -> torch.Tensor:  # (A', V): the going rows' next logits
            chunk = [[] for _ in range(self.B)]
            for i, token in zip(going, tokens):
                chunk[rows[i]] = [token]
            logits = self.feed(chunk, [[] for _ in range(self.B)], [len(r.fed) for r in self.rows])
            return logits[[rows[i] for i in going]]

        limits = [min(self.max_new_tokens, self.max_len - n) for _, n in active]
        reply: dict[int, list[int]] = {b: [] for b in rows}
        for step in decode(logits, self.sampler.rows, feed, max_new_tokens=limits, end_id=self.tok.end_id):
            for i, token in step:
                if token != self.tok.end_id:
                    reply[rows[i]].append(token)
        return reply

    def encode(self, part) -> torch.Tensor:
        if id(part) not in self.encoded:
            x = self.processor.media[part.type].transform(part, part.type)[None]  # (1, ...)
            self.encoded[id(part)] = self.model.encode_media(**{by_name(part.type).key: x.to(self.device)})[part.type]
        return self.encoded[id(part)]

    def feed(self, new: list[list[int]], media_items: list[list], positions: list[int],
             reading: list[tuple[list[list[int]], list[int]] | None] | None = None,
             last: list[int] | None = None) -> torch.Tensor:
        """Append one chunk through the model's forward with the cache: row b's ids new[b] (left-aligned, pads
        after), its media items, positions from positions[b], and with a user-turn reader reading[b] = (its
        turns' reader ids, new[b]'s turn index). Returns next-token logits (B, V) at column last[b] of the
        chunk (default: the chunk's last column, the one token of a decoding step)."""
        B, W, S = self.B, max(len(n) for n in new), self.mask.shape[1]
        ids = torch.full((B, W), self.tok.pad_id, dtype=torch.long)
        pos = torch.zeros(B, W, dtype=torch.long)
        live = torch.zeros(B, W, dtype=torch.long)
        for b, n in enumerate(new):
            ids[b, :len(n)] = torch.tensor(n, dtype=torch.long)
            pos[b] = positions[b] + torch.arange(W).clamp(max=max(len(n) - 1, 0))
            live[b, :len(n)] = 1
            self.rows[b].fed += n
            self.rows[b].cols += range(S, S + len(n))
        media: dict[str, list] = {}
        for items in media_items:  # row-major, as the fusion fills the placeholder slots
            for p in items:
                media.setdefault(p.type, []).append(self.encode(p))
        self.mask = torch.cat([self.mask, live.to(self.device)], 1)
        reader = {}
        if reading is not None:
            reader = {k: v.to(self.device) for k, v in reader_batch(reading, W).items()}
        at = {"logits_to_keep": 1} if last is None else {"logits_at": torch.tensor(last, device=self.device)}
        out = self.model(ids.to(self.device), attention_mask=self.mask, cache=self.cache,
                         media_embeds={m: torch.cat(v) for m, v in media.items()}, position_ids=pos.to(self.device),
                         **at, **reader)
        return out.logits[:, -1].float()  # (B, V)

    def compact(self) -> None:
        """Each row's live columns gathered to the right end, the dead ones dropped."""
        if not self.cache.keys:
            return
        n = max(len(r.cols) for r in self.rows)
        if n == self.mask.shape[1]:
            return  # nothing dead
        idx = torch.zeros(self.B, n, dtype=torch.long)
        new_mask = torch.zeros(self.B, n, dtype=torch.long)
        for b, r in enumerate(self.rows):
            k = len(r.cols)
            if k:
                idx[b, n - k:] = torch.tensor(r.cols)
                new_mask[b, n - k:] = 1
            r.cols = list(range(n - k, n))
        self.cache.gather(idx.to(self.device))
        self.mask = new_mask.to(self.device)
