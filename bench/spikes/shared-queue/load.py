"""Closed-loop load for the spike: 16 keep-alive connections to Envoy's
listener for 9 s, so that the receiving workers' event loops are busy."""
import http.client, threading, time
stop = time.time() + 9
count = [0]
def run():
    c = http.client.HTTPConnection("127.0.0.1", 19000)
    n = 0
    while time.time() < stop:
        c.request("GET", "/")
        c.getresponse().read()
        n += 1
    count[0] += n
ts = [threading.Thread(target=run) for _ in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
print("requests", count[0], "per s", count[0] / 9)
