// Behavioural simulation model of the ECP5 DP16KD block RAM (18 Kbit, true dual port).
//
// Yosys ships DP16KD as a blackbox only (cells_sim_ecp5.v; YosysHQ/yosys#1358), so a
// gate-level simulation of a netlist with block RAM reads whatever the simulator makes
// of undriven outputs (Verilator: zeros). firstspike's gate-level set-up replaces that
// blackbox with this model (firstspike.sim.rtl).
//
// Written from Lattice's ECP5 memory usage guide (FPGA-TN-02204), not from the vendor's
// model. What it implements:
//   * the array: 2048 bytes of 9 bits (18,432 bits). Widths 9/18/36 see whole bytes
//     (word address AD[13:3] / AD[13:4] / AD[13:5], byte enables AD[1:0] at x18 and
//     AD[3:0] at x36); widths 1/2/4 see only the 8 data bits of each byte
//     (address AD[13:0] / AD[13:1] / AD[13:2]);
//   * data pins: x1..x18 on DI/DO[w-1:0] of the port; x36 (the PDPW16KD use, port A
//     writes, port B reads) on {DIB, DIA} and {DOB, DOA}; a port B narrower than 18
//     next to a x36 port A reads on DOB;
//   * INITVAL_xx: 16 words of 18 bits per parameter, word j in bits [20j +: 18]
//     (word = byte 2k in bits 8:0, byte 2k+1 in bits 17:9);
//   * CE (clock enable: no read, no write when low), CS decode (CSDECODE), WE, the write
//     modes NORMAL (output holds during a write), WRITETHROUGH (output = new contents),
//     READBEFOREWRITE (output = old contents), REGMODE NOREG/OUTREG (OCE enables the
//     output register), RST sync/async (clears the output; a sync reset blocks the write),
//     CLKxMUX "INV";
//   * a read of bytes that the other port writes at the same clock edge is undefined in
//     the silicon: the model returns the complement of the old contents and counts it
//     (collisions), so a design that depends on such a read fails its comparison instead
//     of passing by luck. One clock for both ports is assumed for that check.
// Anything else (another DATA_WIDTH) stops the simulation.
module DP16KD(
	input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
	input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
	input CEA, OCEA, CLKA, WEA, RSTA,
	input CSA2, CSA1, CSA0,
	output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
	input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
	input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
	input CEB, OCEB, CLKB, WEB, RSTB,
	input CSB2, CSB1, CSB0,
	output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
	parameter DATA_WIDTH_A = 18;
	parameter DATA_WIDTH_B = 18;
	parameter REGMODE_A = "NOREG";
	parameter REGMODE_B = "NOREG";
	parameter RESETMODE = "SYNC";
	parameter ASYNC_RESET_RELEASE = "SYNC";
	parameter CSDECODE_A = "0b000";
	parameter CSDECODE_B = "0b000";
	parameter WRITEMODE_A = "NORMAL";
	parameter WRITEMODE_B = "NORMAL";
	parameter CLKAMUX = "CLKA";
	parameter CLKBMUX = "CLKB";
	parameter WID = 0;
	parameter GSR = "ENABLED";
	parameter INIT_DATA = "STATIC";
	parameter INITVAL_00 = 320'h0;
	parameter INITVAL_01 = 320'h0;
	parameter INITVAL_02 = 320'h0;
	parameter INITVAL_03 = 320'h0;
	parameter INITVAL_04 = 320'h0;
	parameter INITVAL_05 = 320'h0;
	parameter INITVAL_06 = 320'h0;
	parameter INITVAL_07 = 320'h0;
	parameter INITVAL_08 = 320'h0;
	parameter INITVAL_09 = 320'h0;
	parameter INITVAL_0A = 320'h0;
	parameter INITVAL_0B = 320'h0;
	parameter INITVAL_0C = 320'h0;
	parameter INITVAL_0D = 320'h0;
	parameter INITVAL_0E = 320'h0;
	parameter INITVAL_0F = 320'h0;
	parameter INITVAL_10 = 320'h0;
	parameter INITVAL_11 = 320'h0;
	parameter INITVAL_12 = 320'h0;
	parameter INITVAL_13 = 320'h0;
	parameter INITVAL_14 = 320'h0;
	parameter INITVAL_15 = 320'h0;
	parameter INITVAL_16 = 320'h0;
	parameter INITVAL_17 = 320'h0;
	parameter INITVAL_18 = 320'h0;
	parameter INITVAL_19 = 320'h0;
	parameter INITVAL_1A = 320'h0;
	parameter INITVAL_1B = 320'h0;
	parameter INITVAL_1C = 320'h0;
	parameter INITVAL_1D = 320'h0;
	parameter INITVAL_1E = 320'h0;
	parameter INITVAL_1F = 320'h0;
	parameter INITVAL_20 = 320'h0;
	parameter INITVAL_21 = 320'h0;
	parameter INITVAL_22 = 320'h0;
	parameter INITVAL_23 = 320'h0;
	parameter INITVAL_24 = 320'h0;
	parameter INITVAL_25 = 320'h0;
	parameter INITVAL_26 = 320'h0;
	parameter INITVAL_27 = 320'h0;
	parameter INITVAL_28 = 320'h0;
	parameter INITVAL_29 = 320'h0;
	parameter INITVAL_2A = 320'h0;
	parameter INITVAL_2B = 320'h0;
	parameter INITVAL_2C = 320'h0;
	parameter INITVAL_2D = 320'h0;
	parameter INITVAL_2E = 320'h0;
	parameter INITVAL_2F = 320'h0;
	parameter INITVAL_30 = 320'h0;
	parameter INITVAL_31 = 320'h0;
	parameter INITVAL_32 = 320'h0;
	parameter INITVAL_33 = 320'h0;
	parameter INITVAL_34 = 320'h0;
	parameter INITVAL_35 = 320'h0;
	parameter INITVAL_36 = 320'h0;
	parameter INITVAL_37 = 320'h0;
	parameter INITVAL_38 = 320'h0;
	parameter INITVAL_39 = 320'h0;
	parameter INITVAL_3A = 320'h0;
	parameter INITVAL_3B = 320'h0;
	parameter INITVAL_3C = 320'h0;
	parameter INITVAL_3D = 320'h0;
	parameter INITVAL_3E = 320'h0;
	parameter INITVAL_3F = 320'h0;

	function [319:0] initval(input [7:0] i);
		case (i)
			8'h00: initval = INITVAL_00;
			8'h01: initval = INITVAL_01;
			8'h02: initval = INITVAL_02;
			8'h03: initval = INITVAL_03;
			8'h04: initval = INITVAL_04;
			8'h05: initval = INITVAL_05;
			8'h06: initval = INITVAL_06;
			8'h07: initval = INITVAL_07;
			8'h08: initval = INITVAL_08;
			8'h09: initval = INITVAL_09;
			8'h0A: initval = INITVAL_0A;
			8'h0B: initval = INITVAL_0B;
			8'h0C: initval = INITVAL_0C;
			8'h0D: initval = INITVAL_0D;
			8'h0E: initval = INITVAL_0E;
			8'h0F: initval = INITVAL_0F;
			8'h10: initval = INITVAL_10;
			8'h11: initval = INITVAL_11;
			8'h12: initval = INITVAL_12;
			8'h13: initval = INITVAL_13;
			8'h14: initval = INITVAL_14;
			8'h15: initval = INITVAL_15;
			8'h16: initval = INITVAL_16;
			8'h17: initval = INITVAL_17;
			8'h18: initval = INITVAL_18;
			8'h19: initval = INITVAL_19;
			8'h1A: initval = INITVAL_1A;
			8'h1B: initval = INITVAL_1B;
			8'h1C: initval = INITVAL_1C;
			8'h1D: initval = INITVAL_1D;
			8'h1E: initval = INITVAL_1E;
			8'h1F: initval = INITVAL_1F;
			8'h20: initval = INITVAL_20;
			8'h21: initval = INITVAL_21;
			8'h22: initval = INITVAL_22;
			8'h23: initval = INITVAL_23;
			8'h24: initval = INITVAL_24;
			8'h25: initval = INITVAL_25;
			8'h26: initval = INITVAL_26;
			8'h27: initval = INITVAL_27;
			8'h28: initval = INITVAL_28;
			8'h29: initval = INITVAL_29;
			8'h2A: initval = INITVAL_2A;
			8'h2B: initval = INITVAL_2B;
			8'h2C: initval = INITVAL_2C;
			8'h2D: initval = INITVAL_2D;
			8'h2E: initval = INITVAL_2E;
			8'h2F: initval = INITVAL_2F;
			8'h30: initval = INITVAL_30;
			8'h31: initval = INITVAL_31;
			8'h32: initval = INITVAL_32;
			8'h33: initval = INITVAL_33;
			8'h34: initval = INITVAL_34;
			8'h35: initval = INITVAL_35;
			8'h36: initval = INITVAL_36;
			8'h37: initval = INITVAL_37;
			8'h38: initval = INITVAL_38;
			8'h39: initval = INITVAL_39;
			8'h3A: initval = INITVAL_3A;
			8'h3B: initval = INITVAL_3B;
			8'h3C: initval = INITVAL_3C;
			8'h3D: initval = INITVAL_3D;
			8'h3E: initval = INITVAL_3E;
			8'h3F: initval = INITVAL_3F;
			default: initval = 320'h0;
		endcase
	endfunction

	function [2:0] csdecode(input [8*5-1:0] s);
		csdecode = {s[16] , s[8], s[0]};  // "0bXYZ": the last three characters, '0' or '1'
	endfunction

	// width -> log2 of the address unit: the word address is AD[13:sh]
	function integer shift_of(input integer w);
		case (w)
			1: shift_of = 0; 2: shift_of = 1; 4: shift_of = 2; 9: shift_of = 3; 18: shift_of = 4; 36: shift_of = 5;
			default: shift_of = -1;
		endcase
	endfunction

	reg [8:0] mem [0:2047];
	integer collisions = 0;

	initial begin : init
		integer i, j;
		reg [319:0] iv;
		if (shift_of(DATA_WIDTH_A) < 0 || shift_of(DATA_WIDTH_B) < 0 || DATA_WIDTH_B == 36 && DATA_WIDTH_A != 36) begin
			$display("DP16KD model: unsupported DATA_WIDTH_A=%0d DATA_WIDTH_B=%0d", DATA_WIDTH_A, DATA_WIDTH_B);
			$finish;
		end
		for (i = 0; i < 64; i = i + 1) begin
			iv = initval(i[7:0]);
			for (j = 0; j < 16; j = j + 1) begin
				mem[(i * 16 + j) * 2] = iv[j * 20 +: 9];
				mem[(i * 16 + j) * 2 + 1] = iv[j * 20 + 9 +: 9];
			end
		end
	end

	wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
	wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
	wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
	wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
	wire clka = CLKAMUX == "INV" ? ~CLKA : CLKA;
	wire clkb = CLKBMUX == "INV" ? ~CLKB : CLKB;
	wire csa = {CSA2, CSA1, CSA0} == csdecode(CSDECODE_A);
	wire csb = {CSB2, CSB1, CSB0} == csdecode(CSDECODE_B);
	wire [35:0] wda = DATA_WIDTH_A == 36 ? {dib, dia} : {18'b0, dia};
	wire [35:0] wdb = {18'b0, dib};

	// A port's view of the array: at widths 9/18/36 it reaches n = w/9 whole bytes from byte
	// b0; at widths 1/2/4 it reaches w data bits of one byte, from bit `off`.
	function [11:0] base_byte(input integer w, input [13:0] ad);
		base_byte = w >= 9 ? (ad >> shift_of(w)) * (w / 9) : ((ad >> shift_of(w)) * w) >> 3;
	endfunction
	function [3:0] bit_off(input integer w, input [13:0] ad);
		bit_off = w >= 9 ? 4'd0 : ((ad >> shift_of(w)) * w) & 7;
	endfunction
	function benable(input integer w, input [13:0] ad, input integer i);  // byte i of the word
		benable = w == 18 || w == 36 ? ad[i] : 1'b1;
	endfunction
	// bits of byte `b` that port (w, ad) writes when `we` (collision check of the other port)
	function [8:0] wmask(input integer w, input [13:0] ad, input we, input [11:0] b);
		integer i;
		begin
			wmask = 9'b0;
			if (we) begin
				if (w >= 9) begin
					for (i = 0; i < w / 9; i = i + 1)
						if (base_byte(w, ad) + i == b && benable(w, ad, i)) wmask = 9'h1ff;
				end else if (base_byte(w, ad) == b)
					wmask = ((9'd1 << w) - 9'd1) << bit_off(w, ad);
			end
		end
	endfunction

	wire srsta = RESETMODE == "SYNC" && RSTA, srstb = RESETMODE == "SYNC" && RSTB;
	wire arsta = RESETMODE == "ASYNC" && RSTA, arstb = RESETMODE == "ASYNC" && RSTB;
	wire wra = CEA && csa && WEA && !srsta;
	wire web = WEB && DATA_WIDTH_A != 36;  // port B of a x36 write port only reads
	wire wrb = CEB && csb && web && !srstb;
	reg [35:0] qa = 36'b0, qb = 36'b0, ra = 36'b0, rb = 36'b0;

	// One port's clock edge, for both ports (P = this port, O = the other one).
`define FS_DP16KD_PORT(W, WO, rd, ad, ado, wd, wr, wro, clko, ce, cs, we, mode, srst, q, r, oce) \
		if (srst) begin \
			q <= 36'b0; \
			r <= 36'b0; \
		end else begin \
			if ((ce) && (cs) && (rd) && (!(we) || (mode) != "NORMAL")) begin \
				for (i = 0; i < (W >= 9 ? W / 9 : 1); i = i + 1) begin \
					b = base_byte(W, ad) + i; \
					hit = wmask(WO, ado, (wro) && (clko), b); \
					by = mem[b]; \
					if ((we) && (mode) == "WRITETHROUGH" && benable(W, ad, i)) \
						by = W >= 9 ? wd[9 * i +: 9] : (by & ~(((9'd1 << W) - 9'd1) << bit_off(W, ad))) | ((wd[8:0] & ((9'd1 << W) - 9'd1)) << bit_off(W, ad)); \
					else if (hit != 0) begin \
						by = by ^ hit; \
						collisions = collisions + 1; \
					end \
					if (W >= 9) q[9 * i +: 9] <= by; \
					else q[8:0] <= (by >> bit_off(W, ad)) & ((9'd1 << W) - 9'd1); \
				end \
			end \
			if (wr) \
				for (i = 0; i < (W >= 9 ? W / 9 : 1); i = i + 1) \
					if (benable(W, ad, i)) begin \
						b = base_byte(W, ad) + i; \
						if (W >= 9) mem[b] <= wd[9 * i +: 9]; \
						else mem[b] <= (mem[b] & ~(((9'd1 << W) - 9'd1) << bit_off(W, ad))) | ((wd[8:0] & ((9'd1 << W) - 9'd1)) << bit_off(W, ad)); \
					end \
			if (oce) r <= q; \
		end

	always @(posedge clka or posedge arsta) begin : port_a
		integer i;
		reg [11:0] b;
		reg [8:0] by, hit;
		if (arsta) begin
			qa <= 36'b0;
			ra <= 36'b0;
		end else begin
			`FS_DP16KD_PORT(DATA_WIDTH_A, DATA_WIDTH_B, DATA_WIDTH_A != 36, ada, adb, wda, wra, wrb, clkb, CEA, csa, WEA, WRITEMODE_A, srsta, qa, ra, OCEA)
		end
	end

	always @(posedge clkb or posedge arstb) begin : port_b
		integer i;
		reg [11:0] b;
		reg [8:0] by, hit;
		if (arstb) begin
			qb <= 36'b0;
			rb <= 36'b0;
		end else begin
			`FS_DP16KD_PORT(DATA_WIDTH_B, DATA_WIDTH_A, 1'b1, adb, ada, wdb, wrb, wra, clka, CEB, csb, web, WRITEMODE_B, srstb, qb, rb, OCEB)
		end
	end
`undef FS_DP16KD_PORT

	final if (collisions != 0)
		$display("DP16KD %m: %0d reads of bytes that the other port wrote at the same edge (undefined in the silicon)", collisions);

	wire [35:0] oa = REGMODE_A == "OUTREG" ? ra : qa;
	wire [35:0] ob = REGMODE_B == "OUTREG" ? rb : qb;
	wire [17:0] doa = DATA_WIDTH_B == 36 ? ob[17:0] : DATA_WIDTH_A == 36 ? 18'b0 : oa[17:0];
	wire [17:0] dob = DATA_WIDTH_B == 36 ? ob[35:18] : ob[17:0];
	assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} = doa;
	assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
endmodule
