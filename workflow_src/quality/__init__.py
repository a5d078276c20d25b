"""Image quality: FID and qFID (:mod:`.fid`) in the feature space of pytorch-fid's Inception or of the
tiny profile's offline feature network (:mod:`.featurenet`)."""
