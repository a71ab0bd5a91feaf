"""``python -m gyre.controlplane.images``: build the cached images (setup runs this)."""

from gyre.controlplane.images import HELLO, PAUSE, ensure_image

if __name__ == "__main__":
    for image in (PAUSE, HELLO):
        print(ensure_image(image))
