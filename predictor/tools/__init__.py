"""Offline tools: training, COCO evaluation, capacity planning."""
