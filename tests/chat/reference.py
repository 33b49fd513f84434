"""The reference a session must equal: re-encode the whole conversation from scratch for every token.

No KV cache, no media cache, no state between calls: one full forward pass per generated token.
"""

import torch

from mmdialog.chat.sampling import Sampler, SamplingParams, TextStream
from mmdialog.data.collate import reader_batch


def banned_ids(tok):
    return [tok.pad_id, tok.tok.token_to_id("<|bos|>"), *tok.role_ids.values(), *tok.media_ids.values()]


@torch.no_grad()
def scratch_ids(model, proc, conv, params: SamplingParams) -> list[int]:
    ex = proc(conv, add_generation_prompt=True)
    prompt = ex.input_ids.tolist()
    sampler = Sampler(params, banned_ids(proc.tokenizer))
    stream = TextStream(proc.tokenizer.decode, params.stop)
    reply: list[int] = []
    for _ in range(params.max_new_tokens):
        reader = {}
        if ex.reader_ids is not None:  # a user-turn reader: the prompt's user turns, the reply's tokens read nothing
            index = ex.reader_index.tolist() + [-1] * len(reply)
            reader = reader_batch([(ex.reader_ids, index)], len(index))
        logits = model(input_ids=torch.tensor([prompt + reply]), images=ex.images, audios=ex.audios,
                       videos=ex.videos, **reader).logits[0, -1]
        nxt = sampler(logits, reply)
        if nxt == proc.tokenizer.end_id:
            break
        reply.append(nxt)
        stream.push(reply)
        if stream.stopped:
            break
    return reply


def scratch_reply(model, proc, conv, params: SamplingParams | None = None) -> str:
    params = params or SamplingParams(max_new_tokens=6)
    ids = scratch_ids(model, proc, conv, params)
    stream = TextStream(proc.tokenizer.decode, params.stop)
    stream.push(ids)
    return stream.text
