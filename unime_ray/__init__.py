"""unime-ray: UniME-V2 mining, training and serving of multimodal embedders on Ray.

Kept free of heavy imports: the torchvision start-up hook imports this package in
every Python process of the environment.
"""

__version__ = "0.1.0"
