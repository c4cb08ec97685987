"""Architectures of the CIFAR-100 distillation zoo (32x32 inputs); importing registers them."""

from rld.models.cifar import mobilenetv2, resnet, resnet_imagenet_style, shufflenetv1, shufflenetv2, vgg, wrn

__all__ = ["mobilenetv2", "resnet", "resnet_imagenet_style", "shufflenetv1", "shufflenetv2", "vgg", "wrn"]
