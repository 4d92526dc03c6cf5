"""The webmail XSS corpus: hostile messages as plain .eml files, described in README.md."""

from pathlib import Path

CORPUS_DIR = Path(__file__).parent
# TEST-NET-2: every remote resource and script payload in the corpus points here, so a
# browser test can fail on any request to it.
REMOTE_HOST = "198.51.100.7"


def corpus(*, crlf: bool = False) -> list[tuple[str, bytes]]:
    """(file name, raw message) for every corpus message in name order; CRLF ends if asked."""
    messages = []
    for path in sorted(CORPUS_DIR.glob("*.eml")):
        raw = path.read_bytes()
        if crlf:
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        messages.append((path.name, raw))
    return messages
