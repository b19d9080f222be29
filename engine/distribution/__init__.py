"""Agents (代理): levels with their prices and visible SKUs, the agent tree, API keys."""
