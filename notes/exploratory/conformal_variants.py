# Exploratory (session 19): conformal set variants (LAC as shipped, LAC with the predicted
# label kept, class-conditional/Mondrian, APS) on the probabilities that
# notes/exploratory/calibration_capture.py saved to /tmp/calib (hard-coded). Not part of the suite.
# Run: .venv/bin/python notes/exploratory/conformal_variants.py
import glob, math, numpy as np, collections
def q_thr(scores, cov):
    s=np.sort(scores); n=s.size; r=math.ceil((n+1)*cov)
    return np.inf if r>n else s[r-1]
def lac(vp,vy,tp,cov):
    q=q_thr(1-vp[np.arange(vy.size),vy],cov); return tp>=1-q
def lac_top(vp,vy,tp,cov):
    s=lac(vp,vy,tp,cov); s[np.arange(len(tp)),tp.argmax(1)]=True; return s
def mondrian(vp,vy,tp,cov):
    k=tp.shape[1]; s=np.zeros_like(tp,bool)
    for c in range(k):
        m=vy==c
        if m.sum()==0: s[:,c]=True; continue
        q=q_thr(1-vp[m,c],cov); s[:,c]=tp[:,c]>=1-q
    return s
def aps_scores(p,y):
    o=np.argsort(-p,1); ps=np.take_along_axis(p,o,1); cs=np.cumsum(ps,1)
    rank=np.argsort(o,1)[np.arange(len(y)),y]; return cs[np.arange(len(y)),rank]
def aps(vp,vy,tp,cov):
    q=q_thr(aps_scores(vp,vy),cov)
    o=np.argsort(-tp,1); ps=np.take_along_axis(tp,o,1); cs=np.cumsum(ps,1)
    incl=(cs-ps)<q  # include up to and including the class crossing q
    s=np.zeros_like(tp,bool); np.put_along_axis(s,o,incl,1); return s
meths=dict(lac=lac,lac_top=lac_top,mondrian=mondrian,aps=aps)
res=collections.defaultdict(list)
for f in sorted(glob.glob('/tmp/calib/*.npz')):
    z=np.load(f); name=f.split('/')[-1][:-4]; split,fam,seed=name.rsplit('_',2)
    ty=z['test_y']; ok=ty>=0; ty=ty[ok]; tp=z['test_p'][ok]
    for m,fn in meths.items():
        s=fn(z['val_p'],z['val_y'],tp,0.9)
        res[(split,fam,m)].append((s[np.arange(ty.size),ty].mean(), s.sum(1).mean(), (s.sum(1)==0).mean(), (s.sum(1)>1).mean()))
splits=sorted({k[0] for k in res})
for sp in splits:
  for fam in ['linear','celltypist','mlp']:
    print(f"{sp[:30]:30s} {fam:10s}", "  ".join(f"{m}: cov {np.mean([r[0] for r in res[(sp,fam,m)]]):.3f} size {np.mean([r[1] for r in res[(sp,fam,m)]]):.2f} >1 {np.mean([r[3] for r in res[(sp,fam,m)]]):.2f}" for m in meths))
for m in meths:
    covs=[np.mean([r[0] for r in res[(sp,fam,m)]]) for sp in splits for fam in ['linear','celltypist','mlp']]
    print(m, 'min cov %.3f mean %.3f n<0.87: %d'%(min(covs),np.mean(covs),sum(c<0.87 for c in covs)))
