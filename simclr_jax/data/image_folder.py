"""A folder of images, one subfolder per class (root/<class>/*.jpg|png), read into memory.

`sources.load` with `config.dataset.name = 'image_folder'` calls `read`; it resolves the split
(root/<split>/<class>/... when such a folder exists, else the root sliced) and wraps the arrays
in a `Source`.
"""

import logging
import os
from typing import Callable, Optional

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_NUM_BAD_PATHS_LOGGED = 5


def _read_image(path: str, image_size: int):
  """Decodes one image, resized (shorter side) and centre-cropped to image_size x image_size.

  Returns:
    (uint8 array [image_size, image_size, C], is_grey).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    img.load()  # Decodes now, so a truncated file raises here rather than later.
    is_grey = img.mode in ('1', 'L', 'I;16', 'I', 'F', 'LA')
    img = img.convert('L' if is_grey else 'RGB')
    w, h = img.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box)
    array = np.asarray(img, dtype=np.uint8)
  return (array[..., None] if is_grey else array), is_grey


def class_folders(root: str) -> list[str]:
  """The class subfolders of `root`, sorted (their index is the label)."""
  return sorted(d for d in os.listdir(root)
                if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))


def read(root: str, *, image_size: int, strict: bool = False,
         select: Optional[Callable[[int], slice]] = None):
  """Every image under root/<class>/, decoded to [image_size, image_size, C] uint8.

  Args:
    root: the folder holding one subfolder per class.
    image_size: output side (shorter side resized, centre crop).
    strict: an unreadable file is an error (else it is skipped and logged).
    select: n -> the slice of a fixed class-mixed order of the n files to keep (a split such as
      'train[:90%]'); None keeps every file.

  Returns:
    (images uint8 [N, S, S, C], labels int32 [N], class names). C is 1 only when every image is
    grey.
  """
  classes = class_folders(root)
  if not classes:
    raise ValueError(f'Image folder {root!r} has no class subfolders (expected '
                     'root/<class>/*.png).')
  paths, labels = [], []
  for label, cls in enumerate(classes):
    files = sorted(f for f in os.listdir(os.path.join(root, cls))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f'Class folder {os.path.join(root, cls)!r} holds no JPEG/PNG images: add '
                       'images or remove the folder.')
    paths += [os.path.join(root, cls, f) for f in files]
    labels += [label] * len(files)
  labels = np.asarray(labels, np.int32)
  if select is not None:
    # Files are sorted by class, so a plain slice would cut whole classes out: slice a fixed
    # permutation (seed 0, independent of the run seed) so that 'train[:90%]' and 'train[90%:]'
    # are disjoint and class-mixed.
    order = np.random.default_rng(0).permutation(len(paths))[select(len(paths))]
    order.sort()
    paths = [paths[i] for i in order]
    labels = labels[order]

  images, keep, bad, greys = [], [], [], []
  for i, path in enumerate(paths):
    try:
      array, is_grey = _read_image(path, image_size)
    except Exception as e:  # pylint: disable=broad-except  (PIL raises OSError, SyntaxError, ...)
      if strict:
        raise ValueError(f'Unreadable image {path!r} ({e}); fix or delete it, or set '
                         '`--config.dataset.strict=False` to skip such files.') from e
      bad.append(path)
      continue
    images.append(array)
    greys.append(is_grey)
    keep.append(i)
  if bad:
    logging.warning('Skipped %d unreadable image(s) in %s, e.g. %s', len(bad), root,
                    ', '.join(bad[:_NUM_BAD_PATHS_LOGGED]))
  if not images:
    raise ValueError(f'No readable images in {root!r}.')
  # One channel count for the whole folder: grey only if every image is grey.
  if not all(greys):
    images = [np.repeat(a, 3, axis=-1) if g else a for a, g in zip(images, greys)]
  return np.stack(images), labels[keep], classes
