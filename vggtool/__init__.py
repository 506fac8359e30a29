"""vggtool: reproduce and extend a VGG19-BN / CIFAR-100 compression study."""

__version__ = "0.1.0"
