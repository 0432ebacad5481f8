"""ClientApp: this node's data, its persistent state, the local solver and the reply."""
