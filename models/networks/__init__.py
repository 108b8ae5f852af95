"""Segmentation networks: Net A (ResNet-34 encoder + V-Net decoder) and Net B (V-Net)."""

from models.networks.registry import NETWORKS, available_networks, build_network, count_parameters
from models.networks.resnet_vnet import ResNetVNet
from models.networks.vnet import VNet

__all__ = ["NETWORKS", "ResNetVNet", "VNet", "available_networks", "build_network", "count_parameters"]
