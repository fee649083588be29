"""Several Ollama nodes behind one gateway: the node table, health, routing and the slots.

Import order, bottom first: ``health`` (one node's passive health, pure), ``node`` (one
Ollama server: its cap, counts, pools and catalog), ``routing`` (which free node takes a
request, pure), ``scheduler`` (the slots of every node and the one FIFO wait queue),
``table`` (the nodes by name: built from the config, changed live), ``prober`` (the
active health probe and model discovery).
"""
