"""The media plane: UDP sockets, RTP/RTCP relay, SRTP, per-tick audio pipelines, workers."""
