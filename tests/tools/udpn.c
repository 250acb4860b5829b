// A test tool of the escape battery (tests/isolation.rs): sends N one-byte UDP datagrams to
// ADDRESS, each to another port (a new tracked flow each). Usage: udpn ADDRESS N
#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <sys/socket.h>
int main(int c, char **v) { int n = atoi(v[2]); int s = socket(AF_INET, SOCK_DGRAM, 0); struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_addr.s_addr = inet_addr(v[1]);
  for (int i = 0; i < n; i++) { a.sin_port = htons(1024 + i % 60000); sendto(s, "x", 1, 0, (void*)&a, sizeof a); } return 0; }
