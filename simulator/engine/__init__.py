"""The matching engine: order books, balances, orders, deals and history, as plain Python.

No I/O, no clock of its own (a clock is injected), no aiohttp. Semantics follow the ViaBTC engine
that Expie ran: price-time priority, trades at the maker's price, ROUND_DOWN truncation.
"""
