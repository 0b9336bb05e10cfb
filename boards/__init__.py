"""Boards: UART link and protocol, board top levels, bitstreams (YoWASP), host runtime, virtual board."""
