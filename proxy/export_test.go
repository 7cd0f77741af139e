package proxy

// UDPHandOffAbove is the rate above which a UDP listener's read loop hands
// the fast lane's datagrams to workers (udpworkers.go), for tests that run
// both ways.
var UDPHandOffAbove = udpHandOffAbove
