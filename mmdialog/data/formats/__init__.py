"""Dataset formats users already have, read into Conversations and written back.

    llava     LLaVA JSON: an array (or JSON Lines) of {"id", "image", "conversations": [{"from", "value"}]}
    sharegpt  `messages` or `conversations`, plus `images` / `videos` / `audios` matched in order to the
              <image> / <video> / <audio> tags of any turn
    openai    OpenAI chat JSONL: `messages` whose content parts are text, image_url, input_audio

Each format module has `from_record(record, media_root) -> Conversation` (raising RecordError with
one of common.REASONS) and `to_record(conversation, media_root) -> dict`. Media paths are relative
to a media root (by default the data file's directory) and may not leave it. `DataFile` streams a
file record by record; `DataSource` reads the files of data.train_file (a list, or a glob) as one
training set, processed up front or lazily (`lazy.LazyDataset`: (file, byte offset) per record, read
and processed when drawn); `validate.Checks` are the checks `mmdialog data check` and training share.
"""

from mmdialog.data.formats.common import REASONS, MediaRoot, RecordError
from mmdialog.data.formats.reader import (
    FORMATS, CheckReport, DataFile, DataSource, Invalid, Record, detect_format, expand_files,
)
from mmdialog.data.formats.validate import Checks, check_conversation

__all__ = [
    "FORMATS", "REASONS", "CheckReport", "Checks", "DataFile", "DataSource", "Invalid", "MediaRoot", "Record",
    "RecordError", "check_conversation", "detect_format", "expand_files",
]
