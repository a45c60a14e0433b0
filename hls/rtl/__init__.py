"""RTL bit-serial engine in Amaranth HDL (BISMO-style), elaborated from the overlay manifest.

``hls.rtl.engine.BitSerialEngine(cfg)`` is the component, ``hls.rtl.engine.verilog(cfg)`` its Verilog (top module
``bitserial_engine``); the manifest must say ``regmap_version = 2`` (``overlay/regmap.py``, with measured cycle
and stall counters).

Port contract (all top-level Verilog ports, lower case; 1-bit ports are scalars):

- ``clk``; ``rst`` (synchronous, active high);
- AXI-Lite slave, ``A = log2(RegisterMap.from_overlay(cfg).span)`` address bits (byte addresses):
  ``s_axil_awaddr[A-1:0]``, ``s_axil_awvalid``, ``s_axil_awready``, ``s_axil_wdata[31:0]``, ``s_axil_wstrb[3:0]``,
  ``s_axil_wvalid``, ``s_axil_wready``, ``s_axil_bresp[1:0]``, ``s_axil_bvalid``, ``s_axil_bready``,
  ``s_axil_araddr[A-1:0]``, ``s_axil_arvalid``, ``s_axil_arready``, ``s_axil_rdata[31:0]``, ``s_axil_rresp[1:0]``,
  ``s_axil_rvalid``, ``s_axil_rready``;
- AXI3 master (the Zynq HP port; 64-bit data, INCR bursts of up to 16 beats, never across 4 KiB; up to 8 reads
  and 16 writes outstanding; IDs always 0; byte addresses, the low 32 bits of the ``*_addr`` registers; operand
  and table buffers 8-byte aligned, results 4-byte aligned):
  ``m_axi_arid[0:0]``, ``m_axi_araddr[31:0]``, ``m_axi_arlen[3:0]``, ``m_axi_arsize[2:0]``, ``m_axi_arburst[1:0]``,
  ``m_axi_arvalid``, ``m_axi_arready``, ``m_axi_rid[0:0]``, ``m_axi_rdata[63:0]``, ``m_axi_rresp[1:0]``,
  ``m_axi_rlast``, ``m_axi_rvalid``, ``m_axi_rready``, ``m_axi_awid[0:0]``, ``m_axi_awaddr[31:0]``,
  ``m_axi_awlen[3:0]``, ``m_axi_awsize[2:0]``, ``m_axi_awburst[1:0]``, ``m_axi_awvalid``, ``m_axi_awready``,
  ``m_axi_wid[0:0]``, ``m_axi_wdata[63:0]``, ``m_axi_wstrb[7:0]``, ``m_axi_wlast``, ``m_axi_wvalid``,
  ``m_axi_wready``, ``m_axi_bid[0:0]``, ``m_axi_bresp[1:0]``, ``m_axi_bvalid``, ``m_axi_bready``;
- ``interrupt``: high while ap_done is set.

Register behaviour (``axi.RegisterSlave``, ``control.Controller``): as ``overlay/emulated.py``: write the
descriptor, buffer addresses and ``command``, write ap_start to ``control``; ap_done (clear on read), ap_idle and
ap_ready report the end; ``CMD_IDENTIFY`` makes the ID block (``RegisterMap.id_values``, baked in at elaboration)
readable and reports ``Status.OK``; ``CMD_RUN`` runs the layer or reports the ``Status`` of what it rejects.
``rresp``/``bresp`` are always OKAY; read responses (``rresp``) from DDR are ignored.

Microarchitecture (BISMO: three stages running concurrently, synchronised by tokens):

- **fetch** (``fetch.py``) walks blocks -> weight chunks -> column tiles of ``Dn`` columns. Per chunk (the
  consecutive row tiles of a block whose weights fit one lhs region together) it takes an ``lhs_free`` token and
  reads the tiles' tile-table entries (into the chunk entry memory) and weights into lhs region ``chunk mod 2``;
  per column tile it takes ``rhs_free``, reads the columns' activations into rhs region ``s mod 2`` and gives
  ``rhs_full`` (the first column tile's right after the chunk's first row tile). All reads go through one burst
  DMA with several bursts in flight.
- **execute** (``dpa.py``) per column tile takes ``rhs_full`` and runs one step per row tile of the chunk (on the
  first column tile each as soon as its weights are in, while the chunk's later row tiles still stream): streams
  ``tbits * abits * kwords`` cycles through the ``Dm x Dn`` AND/popcount/shift/negate array, takes ``res_free``,
  drains the accumulators into result region ``s mod 2`` (``Dm`` cycles), gives ``res_full``; ``rhs_free`` after
  the chunk's last row tile, ``lhs_free`` after the chunk's last step.
- **result** (``result.py``) per step takes ``res_full``, writes the int32 results as bursts at their NCHW
  positions, gives ``res_free``.

Buffers: ``Dm`` lhs buffers of ``lhs_mem_words`` and ``Dn`` rhs buffers of ``rhs_mem_words`` Dk-bit words, each
run as two half-size regions (one region, without overlap, for a layer with a tile that needs more than half); a
result buffer of two regions of ``Dm`` words of ``Dn`` int32. ``result_mem_words`` is not used.

Binary (1-bit) rows: ``2 * acc - colsum`` with a per-column popcount of the activations. In a packed tile that
popcount would cover the other rows' K spans too, so there the layout stores a binary row as a 2-bit two's
complement row (``overlay/layout.py``, ``stored_weight_bits``: 0 outside its span) and the tile table says 2; a
packed entry with a 1-bit row is not the layout's table (``BAD_TABLE``, as the emulation).

Loop order: (block, weight chunk, column tile, row tile of the chunk). A chunk's weights stay in one lhs region
while all column tiles stream past, and each column tile's activations are fetched once per chunk (a block's
activations are read ``ceil(row tiles / chunk)`` times, not once per row tile). The lhs keeps two regions: the
next chunk's entries and weights are fetched while the current chunk runs (a chunk is then at most half the
buffer: one region, without overlap, for a layer with a tile that needs more than half). With two rhs regions,
fetch of column tile ``c + 1``, execute of column tile ``c`` and write-back of the previous step overlap.
"""
