"""Stages on a Remote Execution API (REAPI v2) cluster.

``action``: a stage call as an REAPI Action (pure data, no I/O);
``bridge``: grpc.aio on one asyncio thread, awaited from trio;
``client``: the CAS, ActionCache, Execution and Bots calls we make;
``launcher``: the trusted program an Action's Command runs;
``executor``: the remote executor (same interface as the local one);
``worker``: ``noether worker``, a Remote Workers API bot.

Needs the ``remote`` extra (grpcio, protobuf, googleapis-common-protos).
"""
