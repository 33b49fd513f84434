from pathlib import Path

import pytest

from mmdialog.data.conversation import Text

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "formats"
MEDIA = FIXTURES / "media"


def shape(conv) -> list:
    """A conversation as plain values: roles, texts, and each media part by kind and content hash."""
    return [(t.role, [("text", p.text) if isinstance(p, Text) else (p.type, p.content_hash()) for p in t.parts])
            for t in conv.turns]


def reasons(report) -> dict[int, str]:
    """{line: the reason's category (the text before the first colon or parenthesis)}."""
    return {i.line: i.reason.split(":")[0].split(" (")[0] for i in report.invalid}


@pytest.fixture
def media_root():
    return MEDIA
