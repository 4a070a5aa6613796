#!/usr/bin/env python3
"""Replication under SIGKILL: a 3-node cluster (scripts/cluster.sh) with a topic of 6
partitions, replication factor 3 and min.insync.replicas=2; an idempotent confluent-kafka
producer sends keyed records with acks=all while the leader of a random partition is killed
with SIGKILL every 8-14 s and restarted 3-6 s later. At the end every acknowledged record
must be read back once, at the offset it was acknowledged with.

    scripts/replication-chaos.py [SECONDS]      (default 90; needs confluent-kafka)

A consumer group (confluent-kafka, auto-commit every second) consumes throughout, through
the kills of its coordinator and of partition leaders: it must read every acknowledged
record (no gap in any partition's offsets); records read again after a failover (between
its last commit and the kill, as at-least-once allows) are counted and shown.

Environment: WHARF_BIN (as scripts/cluster.sh), WHARF_CLUSTER_BASE_PORT (default 18092).
Exit status 1 if an acknowledged record is missing, moved or duplicated."""
import os, random, signal, subprocess, tempfile, threading, time, uuid, sys
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
REPO=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D=tempfile.mkdtemp(prefix="wharf-chaos-")
BASE=int(os.environ.get("WHARF_CLUSTER_BASE_PORT","18092"))
env=dict(os.environ, WHARF_CLUSTER_DIR=D, WHARF_CLUSTER_BASE_PORT=str(BASE))
def sh(*a): return subprocess.run(["scripts/cluster.sh",*a],cwd=REPO,env=env,capture_output=True,text=True)
r=sh("start","3"); print(r.stdout.strip()[-300:], r.stderr.strip()[-300:])
boot=",".join(f"127.0.0.1:{BASE+100*i}" for i in range(3))
a=AdminClient({"bootstrap.servers":boot})
topic="chaos-"+uuid.uuid4().hex[:6]
for f in a.create_topics([NewTopic(topic,6,3,config={"min.insync.replicas":"2"})]).values(): f.result(60)
time.sleep(2)
acked={}; errors={}; lock=threading.Lock(); stop=False
def cb(err,msg):
    with lock:
        if err is None: acked[msg.value()]=(msg.partition(),msg.offset())
        else: errors[str(err.name())]=errors.get(str(err.name()),0)+1
p=Producer({"bootstrap.servers":boot,"acks":"all","enable.idempotence":True,"linger.ms":5,"message.timeout.ms":60000})
def produce():
    i=0
    while not stop:
        try:
            p.produce(topic,key=str(i%1000).encode(),value=f"v{i}".encode(),on_delivery=cb); i+=1
        except BufferError: p.poll(0.05)
        p.poll(0)
        if i%200==0: time.sleep(0.01)
    p.flush(120)
t=threading.Thread(target=produce); t.start()
group_seen={}; group_again=[0]; group_stop=[False]; group_errors={}
def group_consume():
    gc=Consumer({"bootstrap.servers":boot,"group.id":"chaos-group-"+topic,"auto.offset.reset":"earliest",
                 "enable.auto.commit":True,"auto.commit.interval.ms":1000,"session.timeout.ms":10000})
    gc.subscribe([topic])
    while not group_stop[0]:
        m=gc.poll(0.5)
        if m is None: continue
        if m.error():
            group_errors[str(m.error().name())]=group_errors.get(str(m.error().name()),0)+1; continue
        k=(m.partition(),m.offset())
        if k in group_seen: group_again[0]+=1
        group_seen[k]=m.value()
    gc.close()
g=threading.Thread(target=group_consume); g.start()
kills=[]
DUR=float(sys.argv[1]) if len(sys.argv)>1 else 90
t0=time.time()
while time.time()-t0<DUR:
    time.sleep(random.uniform(8,14))
    md=a.list_topics(topic,timeout=10).topics[topic]
    part=random.choice(list(md.partitions.values()))
    node=part.leader; what=f"partition {part.id}"
    if len(kills)%2==1:
        # Every other round, the consumer group's coordinator instead.
        try:
            d=a.describe_consumer_groups(["chaos-group-"+topic])["chaos-group-"+topic].result(10)
            node=d.coordinator.id; what="the group's coordinator"
        except Exception as e:
            print("no coordinator to kill this round:",e)
    if node<1: continue
    pid=int(open(f"{D}/node-{node}/wharf.pid").read())
    os.kill(pid,signal.SIGKILL); kills.append((round(time.time()-t0,1),node,what))
    time.sleep(random.uniform(3,6))
    r=sh("start")
stop=True; t.join()
print("kills (t, node, what it led):",kills)
print("acked",len(acked),"errors",errors)
# read back
c=Consumer({"bootstrap.servers":boot,"group.id":"chk-"+uuid.uuid4().hex[:6],"auto.offset.reset":"earliest","enable.auto.commit":False})
tps=[TopicPartition(topic,i,0) for i in range(6)]
highs=[c.get_watermark_offsets(TopicPartition(topic,i),timeout=20)[1] for i in range(6)]
c.assign(tps); seen={}; dup=0; deadline=time.time()+120
done=[False]*6
while not all(done) and time.time()<deadline:
    m=c.poll(0.5)
    if m is None: continue
    if m.error(): continue
    if m.value() in seen: dup+=1
    seen[m.value()]=(m.partition(),m.offset())
    if m.offset()+1>=highs[m.partition()]: done[m.partition()]=True
    for i in range(6):
        if highs[i]==0: done[i]=True
lost=[v for v,po in acked.items() if seen.get(v)!=po]
# The group catches up with the high watermarks, then stops.
deadline=time.time()+120
while time.time()<deadline and not all(any(k==(i,highs[i]-1) for k in group_seen) or highs[i]==0 for i in range(6)):
    time.sleep(0.5)
group_stop[0]=True; g.join()
gaps=[]
for i in range(6):
    got=sorted(o for (p_,o) in group_seen if p_==i)
    want=set(range(0,highs[i]))
    missing=sorted(want-set(got))
    if missing: gaps.append((i,len(missing),missing[:3]))
group_missed=[v for v,po in acked.items() if group_seen.get(po)!=v]
print("consumer group: read",len(group_seen),"records, read again after a failover",group_again[0],
      "partitions with a gap",gaps,"acked but not read by the group",len(group_missed),"errors",group_errors)
print("high watermarks",highs,"read",len(seen),"duplicates",dup,"acked but missing or moved",len(lost), lost[:5])
sh("stop")
subprocess.run(["rm","-rf",D])
sys.exit(1 if lost or dup or gaps or group_missed else 0)
