"""Attachment file names that are safe to write on any file system."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["SEPARATORS_RE", "safe_filename"]

_MAX_FILENAME_BYTES = 150
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789¹²³"}
)
SEPARATORS_RE = re.compile(r"[/\\]+")
_FORBIDDEN_CHARS_RE = re.compile(r'[<>:"|?*]')
_DOTS_RE = re.compile(r"\.{2,}")
_EXTENSIONS: dict[str, str] = {
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/json": ".json",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".asc",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "image/tiff": ".tif",
    "image/heic": ".heic",
    "text/plain": ".txt",
    "text/html": ".html",
    "text/csv": ".csv",
    "text/calendar": ".ics",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}


def _extension_for(content_type: str) -> str:
    return _EXTENSIONS.get(content_type, ".bin")


def safe_filename(name: str | None, content_type: str = "", index: int = 1) -> str:
    """A file name that is safe on any file system; never empty.

    Keeps only the last path component, drops control and bidi-override
    characters, replaces characters Windows forbids, removes leading dots and
    spaces and any "..", defuses device names (CON, NUL, COM1, ...), and
    bounds the name to 150 bytes of UTF-8, keeping the extension. Without a
    usable name it is "attachment-<index><extension of content_type>".
    """
    cleaned = _clean_filename(name or "")
    return cleaned or f"attachment-{index}{_extension_for(content_type)}"


def _clean_filename(name: str) -> str:
    name = unicodedata.normalize("NFC", name)  # Apple Mail sends decomposed names
    # Cc controls, Cf format characters (U+202E right-to-left override turns
    # "gpj.exe" into "exe.jpg" on screen), Cs surrogates; line separators too.
    name = "".join(
        " " if unicodedata.category(ch) in ("Zl", "Zp") else ch
        for ch in name
        if unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )
    parts = [part for part in SEPARATORS_RE.split(name) if part.strip(" .")]
    name = parts[-1] if parts else ""
    name = _FORBIDDEN_CHARS_RE.sub("_", name)
    name = " ".join(name.split())
    name = _DOTS_RE.sub(".", name)
    # Windows drops trailing dots and spaces, so "evil.exe." is "evil.exe".
    name = name.strip(". ")
    if name and name.split(".", 1)[0].strip().upper() in _RESERVED_NAMES:
        name = f"_{name}"
    return _truncate_filename(name, _MAX_FILENAME_BYTES)


def _truncate_filename(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext}" if dot and stem and 0 < len(ext) <= 16 and " " not in ext else ""
    if not suffix:
        stem = name
    budget = limit - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return f"{cut or 'attachment'}{suffix}"
