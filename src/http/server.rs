//! The HTTP/1.1 server loop on may::net (accept, parse, limits, keep-alive, chunked writer).
