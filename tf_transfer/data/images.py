"""Image decoding shared by the training pipeline and the serving signature, and the up-front
check that finds unreadable files before training starts."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence

import tensorflow as tf

log = logging.getLogger(__name__)

# Formats tf.io.decode_image reads; GIFs give their first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEFAULT_MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 256 << 20  # a file larger than this is not read as one image


def decode(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes -> uint8 [H, W, 3]; grayscale and RGBA become RGB."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize to size x size (bilinear) and return uint8, so cached and served pixels are identical."""
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def decode_jpeg_at_least(contents: tf.Tensor, size: int) -> tf.Tensor:
    """Decode a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides >= size.

    libjpeg scales in the inverse DCT, so a 12-megapixel photo bound for 224 pixels decodes at 1/8
    for a fraction of the work, and the smaller image then resizes with less aliasing.
    """
    shape = tf.image.extract_jpeg_shape(contents)
    short = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
    steps = tf.math.floor(tf.math.log(short / float(size)) / tf.math.log(2.0))  # largest usable power of 2
    index = tf.cast(tf.clip_by_value(steps, 0.0, 3.0), tf.int32)
    branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in (1, 2, 4, 8)]
    image = tf.switch_case(index, branches)
    image.set_shape([None, None, 3])
    return image


def decode_any(contents: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [H, W, 3]: JPEGs at the smallest DCT scale that keeps `size`, other formats in full."""
    return tf.cond(tf.io.is_jpeg(contents), lambda: decode_jpeg_at_least(contents, size), lambda: decode(contents))


def decode_and_resize(contents: tf.Tensor, size: int) -> tf.Tensor:
    """The one image path of tf_transfer: used by the data pipeline and by the exported model."""
    return resize(decode_any(contents, size), size)

# --- sizes from the file header, before decoding -------------------------------------------------------

MAX_GIF_BLOCKS = 50_000  # a GIF's block walk stops here (a few seconds at most); beyond it the file is refused
FORMATS = ("unknown", "jpeg", "png", "gif", "bmp", "webp")
MALFORMED = -2  # header_info's frames for a header the decoder would not size from where we read


def _uint(contents: tf.Tensor, offset: int, size: int, little_endian: bool = True) -> tf.Tensor:
    """An unsigned integer of `size` bytes at `offset`, as int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, offset, size), tf.uint8), tf.int64)
    weights = [256 ** i for i in range(size)]
    return tf.reduce_sum(raw * tf.constant(weights if little_endian else weights[::-1], tf.int64))


def _table_size(packed: tf.Tensor) -> tf.Tensor:
    """Bytes of a GIF colour table announced by a packed-fields byte (0 when there is none)."""
    return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0)


def _u16(byte, at):
    at = tf.cast(at, tf.int64)
    return byte(at) + 256 * byte(at + 1)


def gif_extent(contents: tf.Tensor) -> tf.Tensor:
    """[height, width, frames] a GIF costs the decoder, by walking its blocks as giflib reads them.

    giflib allocates every frame at its image descriptor's size and TensorFlow sizes its output from the
    frames, so the logical screen (bytes 6-9) alone can understate the cost: height and width are the
    largest of the screen and of every frame's top + height and left + width. frames is -1 when the walk
    needs more than MAX_GIF_BLOCKS steps.
    """
    data = tf.cast(tf.io.decode_raw(contents, tf.uint8), tf.int64)
    n = tf.size(data, out_type=tf.int64)

    def byte(i):
        return tf.gather(data, tf.clip_by_value(i, 0, n - 1))

    def step(pos, in_blocks, frames, bottom, right, state):
        b = byte(pos)
        at_block = tf.logical_not(in_blocks)
        image = tf.logical_and(at_block, tf.equal(b, 0x2C))  # descriptor, colour table, LZW code size
        # the descriptor: left, top, width, height (little-endian 16 bits each) after the 0x2C
        bottom = tf.where(image, tf.maximum(bottom, _u16(byte, pos + 3) + _u16(byte, pos + 7)), bottom)
        right = tf.where(image, tf.maximum(right, _u16(byte, pos + 1) + _u16(byte, pos + 5)), right)
        new_pos = tf.where(at_block, tf.where(image, pos + 11 + _table_size(byte(pos + 9)), pos + 2),
                           pos + 1 + b)  # inside a chain of sub-blocks: length byte + data (0 ends it)
        new_in_blocks = tf.logical_or(at_block, tf.not_equal(b, 0))
        end = tf.logical_or(tf.logical_and(at_block, tf.logical_not(tf.logical_or(image, tf.equal(b, 0x21)))),
                            new_pos >= n)  # the trailer (or anything giflib would refuse), or the end of data
        return new_pos, new_in_blocks, frames + tf.cast(image, tf.int64), bottom, right, tf.logical_or(state, end)

    start = tf.constant(13, tf.int64) + _table_size(byte(tf.constant(10, tf.int64)))
    zero = tf.constant(0, tf.int64)
    _, _, frames, bottom, right, finished = tf.while_loop(
        lambda *state: tf.logical_not(state[-1]), step,
        (start, tf.constant(False), zero, _u16(byte, 8), _u16(byte, 6), start >= n),
        maximum_iterations=MAX_GIF_BLOCKS)
    return tf.stack([bottom, right, tf.where(finished, frames, tf.constant(-1, tf.int64))])


MAX_WEBP_CHUNKS = 64  # chunks walked to find a VP8X file's image (ICCP, ALPH, EXIF... come first)


def _padded(contents: tf.Tensor, offset, size: int) -> tf.Tensor:
    """`size` bytes at `offset`, zero-padded past the end (never an out-of-range error)."""
    offset = tf.minimum(tf.cast(offset, tf.int64), tf.cast(tf.strings.length(contents), tf.int64))
    piece = tf.strings.substr(contents, offset, size)
    return tf.strings.substr(tf.strings.join([piece, tf.constant(b"\0" * size)]), 0, size)


def _vp8_size(chunk: tf.Tensor) -> tf.Tensor:
    """[height, width] of a 'VP8 ' (lossy: 14-bit sizes after the frame tag and start code) or 'VP8L'
    (lossless: 14-bit width - 1 and height - 1 after the signature byte) chunk, from its first 30 bytes."""
    lossless_bits = _uint(chunk, 9, 4)
    return tf.where(tf.equal(tf.strings.substr(chunk, 0, 4), b"VP8L"),
                    tf.stack([(lossless_bits // 16384) % 16384 + 1, lossless_bits % 16384 + 1]),
                    tf.stack([_uint(chunk, 16, 2) % 16384, _uint(chunk, 14, 2) % 16384]))


def _webp_frame(contents: tf.Tensor) -> tf.Tensor:
    """[height, width] of the first VP8/VP8L chunk of a WebP, walking its RIFF chunks (0, 0 if none)."""
    def step(pos, hw, done):
        chunk = _padded(contents, pos, 30)
        kind = tf.strings.substr(chunk, 0, 4)
        image = tf.logical_or(tf.equal(kind, b"VP8 "), tf.equal(kind, b"VP8L"))
        size = _uint(chunk, 4, 4)
        return pos + 8 + size + size % 2, tf.where(image, _vp8_size(chunk), hw), image

    n = tf.cast(tf.strings.length(contents), tf.int64)
    _, hw, _ = tf.while_loop(lambda pos, hw, done: tf.logical_and(tf.logical_not(done), pos + 8 <= n), step,
                             (tf.constant(12, tf.int64), tf.zeros([2], tf.int64), tf.constant(False)),
                             maximum_iterations=MAX_WEBP_CHUNKS)
    return hw


def _webp_size(contents: tf.Tensor) -> tf.Tensor:
    """[height, width, frames] of a WebP; frames -1 for an animated one (refused: its frames are unbounded).

    A VP8X file's canvas and the frame inside it are both read, and the larger side of each wins: the
    decoder works at the frame's own size whatever the canvas claims."""
    chunk = tf.strings.substr(contents, 12, 4)

    def simple():
        return tf.concat([_vp8_size(_padded(contents, 12, 30)), tf.constant([1], tf.int64)], 0)

    def extended():  # 'VP8X': 24-bit canvas (width - 1) and (height - 1); flag 0x02 marks an animation
        head = _padded(contents, 0, 30)
        animated = tf.equal(_uint(head, 20, 1) // 2 % 2, 1)
        canvas = tf.stack([_uint(head, 27, 3) + 1, _uint(head, 24, 3) + 1])
        return tf.concat([tf.maximum(canvas, _webp_frame(contents)),
                          [tf.where(animated, tf.constant(-1, tf.int64), 1)]], 0)

    return tf.case([(tf.logical_or(tf.equal(chunk, b"VP8 "), tf.equal(chunk, b"VP8L")), simple),
                    (tf.equal(chunk, b"VP8X"), extended)],
                   default=lambda: tf.constant([0, 0, 1], tf.int64), exclusive=True)


def header_info(contents: tf.Tensor) -> tf.Tensor:
    """[format, height, width, frames] from the header (format indexes FORMATS; 0: not an image format
    tf_transfer decodes). Nothing is decoded. The sizes are what the decoder will allocate for, as far as
    the header tells: for GIF and WebP the larger of the header's size and the frames' (see gif_extent,
    _webp_size); for PNG the IHDR chunk libpng reads (frames -2 when the first chunk is not IHDR); for BMP
    the fields TensorFlow's decoder reads; for JPEG the frame header libjpeg reads."""
    n = tf.strings.length(contents)
    # Fixed-offset fields are read from a zero-padded copy of the first 64 bytes: reading past the end
    # of a short input would fail with an unhelpful error (and copying the whole input is wasteful).
    head = tf.strings.join([tf.strings.substr(contents, 0, 64), tf.constant(b"\0" * 64)])

    def of(code: int, hw_frames) -> tf.Tensor:
        return tf.concat([tf.constant([code], tf.int64), hw_frames], axis=0)

    def jpeg():
        return of(1, tf.concat([tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64), [1]], 0))

    def png():
        ihdr = tf.equal(tf.strings.substr(head, 12, 4), b"IHDR")
        frames = tf.where(ihdr, tf.constant(1, tf.int64), MALFORMED)
        return of(2, tf.stack([_uint(head, 20, 4, False), _uint(head, 16, 4, False), frames]))

    def gif():
        return of(3, gif_extent(contents))

    def bmp():
        height = _uint(head, 22, 4)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # negative (two's complement): top-down rows
        return of(4, tf.stack([height, _uint(head, 18, 4), tf.constant(1, tf.int64)]))

    def webp():
        return of(5, _webp_size(contents))

    def starts(offset: int, magic: bytes):
        return tf.equal(tf.strings.substr(head, offset, len(magic)), magic)

    return tf.case([
        (tf.logical_and(n >= 24, starts(0, b"\x89PNG\r\n\x1a\n")), png),
        (tf.logical_and(n >= 13, starts(0, b"GIF")), gif),
        (tf.logical_and(n >= 26, starts(0, b"BM")), bmp),
        (tf.logical_and(n >= 30, tf.logical_and(starts(0, b"RIFF"), starts(8, b"WEBP"))), webp),
        (tf.io.is_jpeg(contents), jpeg),
    ], default=lambda: tf.constant([0, 0, 0, 0], tf.int64), exclusive=False)


def size_checks(contents: tf.Tensor, max_pixels: int) -> list:
    """Assertions that refuse, before any decoding allocates memory: empty input, formats other than
    JPEG/PNG/GIF/BMP/WebP, malformed PNG headers, zero-sized images, animated WebP, GIFs too complex to
    walk, and images whose pixels (times frames, for GIF; the larger of header and frames, see
    header_info) exceed `max_pixels`."""
    tf.debugging.assert_positive(tf.strings.length(contents), message="empty image bytes")
    info = header_info(contents)
    fmt, h, w, frames = info[0], info[1], info[2], info[3]

    def check(ok, message):
        return tf.debugging.assert_equal(ok, True, message=message)

    return [
        check(fmt > 0, "not an image in a supported format (expected JPEG, PNG, GIF, BMP or WebP)"),
        check(tf.logical_or(fmt == 0, tf.logical_and(h > 0, w > 0)), "image has zero width or height"),
        check(frames != MALFORMED, "malformed header: a PNG's first chunk must be IHDR"),
        check(tf.logical_or(frames >= 0, frames == MALFORMED),
              "animated WebP, or a GIF with too many blocks, is not supported"),
        check(h * w * tf.maximum(frames, 1) <= max_pixels, f"image is larger than the limit of {max_pixels} pixels"),
    ]


def checked_decode(contents: tf.Tensor, size: int, max_pixels: int) -> tf.Tensor:
    """Decode one encoded image to uint8 [size, size, 3] after size_checks (the serving path)."""
    with tf.control_dependencies(size_checks(contents, max_pixels)):
        image = decode_any(contents, size)
    tf.debugging.assert_positive(tf.size(image), message="image has zero width or height")
    return resize(image, size)


def _probe(contents: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """Decode enough to prove a file is a whole, non-empty image within the pixel budget; returns its
    [H, W, C] shape.

    The header checks run first (as in the exported model). JPEGs are decoded at 1/8 scale: entropy
    decoding still reads every block (so truncation is caught) while the inverse DCT costs a fraction.
    """
    with tf.control_dependencies(size_checks(contents, max_pixels)):
        shape = tf.cond(
            tf.io.is_jpeg(contents),
            lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8)),
            lambda: tf.shape(decode(contents)),
        )
    tf.debugging.assert_positive(tf.reduce_prod(shape), message="image has zero size")
    return shape


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def clean_error(error: Exception) -> str:
    """A TensorFlow op error as one readable line (the op's own message, without graph noise)."""
    message = getattr(error, "message", None) or str(error)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    lines = [line.strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith(_NOISE)]
    if not lines:
        return type(error).__name__
    text = re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:.*$", "", lines[0])
    asserted = re.match(r"assertion failed: \[(.*?)\.?\s*\]", text)
    return asserted.group(1) if asserted else text


def _too_big(paths: Sequence[str], max_file_bytes: int) -> dict[str, str]:
    out = {}
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError as e:
            out[path] = f"cannot read: {e.strerror}"
            continue
        if size > max_file_bytes:
            out[path] = f"file of {size} bytes is over the {max_file_bytes}-byte limit for one image"
    return out


def find_unreadable(paths: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_file_bytes: int = MAX_FILE_BYTES) -> dict[str, str]:
    """Decode every file once, in parallel; return {path: reason} for those that are not images.

    Runs the same checks and decoders as training and serving, so a file that passes cannot fail
    mid-epoch, and no file can make the check itself allocate without bound.
    """
    if not paths:
        return {}
    start = time.monotonic()
    bad = _too_big(paths, max_file_bytes) if "://" not in paths[0] else {}
    ids = [i for i, p in enumerate(paths) if p not in bad]
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(ids, tf.int64), [paths[i] for i in ids]))
    ds = ds.map(lambda i, p: (i, _probe(tf.io.read_file(p), max_pixels)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().prefetch(tf.data.AUTOTUNE)
    readable = set()
    last_report = start
    for i, _ in ds.as_numpy_iterator():
        readable.add(int(i))
        now = time.monotonic()
        if now - last_report > 10:
            log.info("  checked %d/%d files...", len(readable), len(paths))
            last_report = now
    for i in ids:
        if i in readable:
            continue
        path = paths[i]
        try:  # re-run eagerly only for the failures, to say why
            _probe(tf.io.read_file(path), max_pixels)
            bad[path] = "could not be decoded"
        except (tf.errors.OpError, ValueError) as e:
            bad[path] = clean_error(e)
    log.debug("checked %d files in %.1fs", len(paths), time.monotonic() - start)
    return bad
